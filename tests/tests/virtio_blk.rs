//! virtio-blk end to end: the test guest drives petrel's disks with `virtio-drivers`.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use tests::blk_image::{image, written_pattern, SECTOR};
use tests::{fnv1a64, kvm_available, run_scenario, Running};

#[test]
fn guest_reads_writes_flushes_and_identifies_two_disks_one_read_only() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rw = image(dir.path(), "rw.img", 2048, 0);
    let ro = image(dir.path(), "ro.img", 64, 0x33);
    let ro_before = std::fs::read(&ro).unwrap();
    let rw_before = std::fs::read(&rw).unwrap();

    let out = run_scenario(
        "blk",
        &[
            "--disk",
            &format!("path={},serial=petrel-serial-0", rw.display()),
            "--disk",
            &format!("path={},id=ro,readonly=on", ro.display()),
        ],
    );
    out.assert_pass("blk");

    let expected_read = |bytes: &[u8]| format!("{:016x}", fnv1a64(&bytes[..8 * SECTOR]));
    assert_eq!(
        out.lines_with("BLK 0 "),
        vec![
            "BLK 0 capacity=2048 ro=0".to_string(),
            "BLK 0 id=petrel-serial-0".to_string(),
            format!("BLK 0 read fnv={}", expected_read(&rw_before)),
            "BLK 0 write=ok flush=ok".to_string(),
        ],
        "{out}"
    );
    assert_eq!(
        out.lines_with("BLK 1 "),
        vec![
            "BLK 1 capacity=64 ro=1".to_string(),
            "BLK 1 id=ro".to_string(),
            format!("BLK 1 read fnv={}", expected_read(&ro_before)),
            "BLK 1 write=rejected".to_string(),
        ],
        "{out}"
    );

    let rw_after = std::fs::read(&rw).unwrap();
    assert_eq!(&rw_after[8 * SECTOR..16 * SECTOR], &written_pattern()[..]);
    assert_eq!(&rw_after[..8 * SECTOR], &rw_before[..8 * SECTOR]);
    assert_eq!(&rw_after[16 * SECTOR..], &rw_before[16 * SECTOR..]);
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        ro_before,
        "read-only image changed"
    );
}

#[test]
fn ops_rate_limit_throttles_the_guest_and_every_request_completes() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "rate.img", 64, 1);
    // 5 requests per second with no burst: 20 reads must wait for the bucket at least
    // three times.
    let out = tests::run_with_env(
        &[
            "--kernel",
            tests::test_guest().to_str().unwrap(),
            "--cmdline",
            "petrel.test=blkrate petrel.n=20",
            "--disk",
            &format!("path={},id=slow,rate=ops=5", img.display()),
        ],
        &[("PETREL_LOG", "petrel::metrics=info")],
    );
    out.assert_pass("blkrate");
    assert_eq!(out.lines_with("BLKRATE "), vec!["BLKRATE n=20 done"]);
    let metrics = tests::device_metrics(&out, "slow");
    let throttled = metrics["rate_limiter"]["throttled_ops_events"]
        .as_u64()
        .unwrap();
    let consumed = metrics["rate_limiter"]["consumed_ops"].as_u64().unwrap();
    assert!(throttled >= 3, "{metrics}");
    assert_eq!(consumed, metrics["read_ops"].as_u64().unwrap(), "{metrics}");
    assert!(metrics["read_ops"].as_u64().unwrap() >= 20, "{metrics}");
}

#[test]
fn blkswap_guest_reports_sector_0_changing_under_it() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "disk.img", 64, 0);
    let before = std::fs::read(&disk).unwrap();
    let mut run = Running::scenario("blkswap", &["--disk", &format!("path={}", disk.display())]);

    let first = run.wait_line("BLKSWAP before", Duration::from_secs(60));
    // Without the API (which swaps the image), rewrite sector 0 in place: the guest watches
    // for any change of its contents. The image lock is advisory, and the device reads through
    // the page cache this write goes to.
    let new_sector = vec![0xa5u8; SECTOR];
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .write_all_at(&new_sector, 0)
        .unwrap();
    let out = run.finish(Duration::from_secs(120));

    out.assert_pass("blkswap");
    assert_eq!(
        first,
        format!("BLKSWAP before fnv={:016x}", fnv1a64(&before[..SECTOR]))
    );
    assert_eq!(
        out.lines_with("BLKSWAP "),
        vec![
            first.clone(),
            "BLKSWAP capacity=64".to_string(),
            format!(
                "BLKSWAP after fnv={:016x} capacity=64",
                fnv1a64(&new_sector)
            ),
        ],
        "{out}"
    );
}
