//! The host side of the test guest's `snapshot` scenario (see
//! `resources/guest/src/scenarios/snapshot.rs`): sends its commands through `PUT /serial`, waits
//! for their answers in the serial log, keeps the generations the host commanded, follows the
//! generations the guest printed (its `WROTE` lines, which steady dirtying adds to on its own),
//! and checks that `COUNT` lines go on without a gap or a repeat across pauses, snapshots,
//! restores and migrations.
//!
//! A `VERIFY ok` must name exactly the generations the guest's output printed before it, and
//! each `WROTE k g` must be one generation above the last one printed for k: a guest restored
//! or migrated from an older state than its output says verifies older generations, or writes
//! one it already printed, and fails.
//!
//! ```no_run
//! # use tests::snapshot_guest::SnapshotGuest;
//! let (vm, mut guest) = SnapshotGuest::boot("128M", &[]);
//! guest.write(&vm, 3);
//! guest.write_all(&vm);
//! guest.verify(&vm); // VERIFY ok 1,1,1,2,1,...
//! vm.set_state("Paused");
//! let at = guest.checkpoint(&vm); // with the snapshot
//! // ... restore into a new petrel `vm2` (its serial log starts empty) ...
//! # let vm2 = vm;
//! guest.restored(&at);
//! guest.assert_counts_continue(&vm2);
//! guest.verify(&vm2);
//! ```

use std::time::{Duration, Instant};

use resources::snapshot_proto::{
    page_words, Command, LAST_WORD_OFFSET, PAGES_PER_SUBREGION, PAGE_SIZE, REGION_SIZE, SUBREGIONS,
    SUBREGION_SIZE,
};

use crate::api_vm::ApiVm;
use crate::{test_guest, Output};

/// How long the guest gets to answer a command (`A` and `v` take well under a second here).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long petrel gets to exit after `q`.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The generations the host commanded, and where the guest's output stands.
#[derive(Debug)]
pub struct SnapshotGuest {
    /// The generations the host commanded (`0`-`f`, `A`): while steady dirtying was never on,
    /// what the guest holds; after, a floor (the guest wrote more on its own).
    gens: [u64; SUBREGIONS],
    /// The device commands' counters, as the guest keeps them.
    counters: DeviceCounters,
    /// Steady dirtying as the host last set it.
    dirtying: bool,
    /// Whether steady dirtying was ever on: the printed generations may then exceed `gens`.
    dirtied: bool,
    /// Serial output of the processes before the current one, up to the checkpoint the
    /// current one was restored from.
    earlier: String,
    /// Bytes of [`SnapshotGuest::output`] already searched for answers.
    answered: usize,
}

/// What the guest was at when a snapshot was taken: restore from it with
/// [`SnapshotGuest::restored`].
#[derive(Clone, Debug)]
pub struct Checkpoint {
    gens: [u64; SUBREGIONS],
    counters: DeviceCounters,
    dirtying: bool,
    dirtied: bool,
    output: String,
    answered: usize,
}

impl Checkpoint {
    /// The generations the host had commanded at the checkpoint.
    pub fn generations(&self) -> [u64; SUBREGIONS] {
        self.gens
    }

    /// The generations the guest had printed at the checkpoint (what its region holds, once
    /// the commands in flight are answered).
    pub fn printed_generations(&self) -> [u64; SUBREGIONS] {
        Printed::scan(&self.output)
            .unwrap_or_else(|e| panic!("{e}\n--- output ---\n{}", self.output))
            .gens
    }

    /// All the guest printed up to the checkpoint, across restores.
    pub fn output(&self) -> &str {
        &self.output
    }
}

impl Default for SnapshotGuest {
    fn default() -> Self {
        SnapshotGuest::new()
    }
}

impl SnapshotGuest {
    /// The host side of a guest that just booted the scenario (all generations 0).
    pub fn new() -> SnapshotGuest {
        SnapshotGuest {
            gens: [0; SUBREGIONS],
            counters: DeviceCounters::default(),
            dirtying: false,
            dirtied: false,
            earlier: String::new(),
            answered: 0,
        }
    }

    /// petrel's arguments that boot the scenario with `memory` of RAM (`--memory`'s syntax;
    /// the region ends at 80 MiB, and the snapshot tests use 128M or more).
    pub fn args(memory: &str) -> Vec<String> {
        [
            "--kernel",
            test_guest().to_str().expect("UTF-8 temp path"),
            "--cmdline",
            "petrel.test=snapshot",
            "--memory",
            memory,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Starts petrel with an API socket, the scenario with `memory` of RAM
    /// ([`SnapshotGuest::args`]) and `extra` arguments, and waits until the guest has written
    /// its region.
    pub fn boot(memory: &str, extra: &[&str]) -> (ApiVm, SnapshotGuest) {
        let args = SnapshotGuest::args(memory);
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        let vm = ApiVm::spawn(&all);
        let guest = SnapshotGuest::new();
        guest.wait_ready(&vm);
        (vm, guest)
    }

    /// Waits for the guest's `SNAPSHOT ready` line (its region is written at generation 0);
    /// fails on a `FAIL` line (too little RAM, for instance).
    pub fn wait_ready(&self, vm: &ApiVm) {
        let found = vm.wait_serial(ANSWER_TIMEOUT, |l| {
            (l.starts_with("SNAPSHOT ready") || l.starts_with("FAIL ")).then(|| l.to_string())
        });
        assert!(found.starts_with("SNAPSHOT ready"), "{found}");
    }

    /// The generations the host commanded so far.
    pub fn generations(&self) -> [u64; SUBREGIONS] {
        self.gens
    }

    /// The generations the guest printed so far (its `WROTE` lines, from all its processes);
    /// panics if the output contradicts itself (see [`Printed::scan`]).
    pub fn printed_generations(&self, vm: &ApiVm) -> [u64; SUBREGIONS] {
        self.printed(&self.output(vm)).gens
    }

    /// Scans `output`, panicking with it on a contradiction.
    fn printed(&self, output: &str) -> Printed {
        Printed::scan(output).unwrap_or_else(|e| panic!("{e}\n--- output ---\n{output}"))
    }

    /// The scenario's answer to `VERIFY` with the host's commanded generations (the right one
    /// while steady dirtying was never on).
    pub fn expected_verify(&self) -> String {
        let gens: Vec<String> = self.gens.iter().map(u64::to_string).collect();
        format!("VERIFY ok {}", gens.join(","))
    }

    /// Sends `command`'s byte and, for a command with an answer, waits for the answer line
    /// (`WROTE ...`, `VERIFY ...`, `UNKNOWN ...`) printed after it was sent, and returns it.
    /// Bumps the host's generations as [`SnapshotGuest::put`] does, without checking the
    /// answer: [`SnapshotGuest::write`] and friends check it.
    pub fn send(&mut self, vm: &ApiVm, command: Command) -> Option<String> {
        self.put(vm, command);
        let prefix = answer_prefix(command)?;
        Some(self.answer_any(vm, &[prefix, "NODEV "]))
    }

    /// Sends `command`'s byte without waiting for its answer (to pause or snapshot while the
    /// guest works on it); [`SnapshotGuest::answer`] waits for it later, in this process or
    /// in one restored from a snapshot taken meanwhile. A write command bumps the host's
    /// generations now, and a device command with a counter the host's counter: the guest has
    /// it, and a snapshot taken from here on holds it.
    pub fn put(&mut self, vm: &ApiVm, command: Command) {
        let byte = command
            .byte()
            .unwrap_or_else(|| panic!("{command:?} has no byte"));
        // Answers to this command can only come after this point: the guest has not read it.
        self.answered = self.answered.max(self.output(vm).len());
        vm.ok(
            "PUT",
            "/serial",
            serde_json::json!({ "data": char::from(byte).to_string() }),
        );
        let counters = &mut self.counters;
        match command {
            Command::Write(k) => self.gens[k] += 1,
            Command::WriteAll => self.gens.iter_mut().for_each(|g| *g += 1),
            Command::DiskWrite => counters.disk_writes += 1,
            Command::Console => counters.console_lines += 1,
            Command::Vsock => counters.vsock_pings += 1,
            Command::Gpu => counters.frames += 1,
            Command::Net => counters.net_frames += 1,
            _ => {}
        }
    }

    /// Waits for a complete line starting with `prefix` (`WROTE `, `VERIFY `, `UNKNOWN `) in
    /// [`SnapshotGuest::output`] after what earlier answers consumed, consumes the output up
    /// to it and returns it. Fails on a `FAIL` or `panicked` line, or after
    /// [`ANSWER_TIMEOUT`].
    pub fn answer(&mut self, vm: &ApiVm, prefix: &str) -> String {
        self.answer_any(vm, &[prefix])
    }

    /// [`SnapshotGuest::answer`] for a line starting with any of `prefixes`.
    /// Steady dirtying's `WROTE` lines are not answers and are skipped.
    pub fn answer_any(&mut self, vm: &ApiVm, prefixes: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let log = self.output(vm);
            let printed = self.printed(&log);
            for at in printed.lines.iter().filter(|l| l.start >= self.answered) {
                let line = &log[at.start..at.end - 1];
                if at.tick {
                    continue;
                }
                if prefixes.iter().any(|p| line.starts_with(p)) {
                    self.answered = at.end;
                    return line.to_string();
                }
                assert!(
                    !line.starts_with("FAIL ") && !line.starts_with("panicked"),
                    "the guest failed while the host waited for {prefixes:?}:\n{log}"
                );
            }
            assert!(
                start.elapsed() < ANSWER_TIMEOUT,
                "no {prefixes:?} line within {ANSWER_TIMEOUT:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// `0`-`f`: bumps sub-region `k`'s generation and checks the guest's `WROTE k g`: g is
    /// the host's generation (at least that, once steady dirtying was on).
    pub fn write(&mut self, vm: &ApiVm, k: usize) {
        assert!(k < SUBREGIONS, "sub-region {k}");
        let answer = self.send(vm, Command::Write(k)).expect("WROTE");
        let g = answer
            .strip_prefix(&format!("WROTE {k} "))
            .and_then(|g| g.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{answer:?} is not WROTE {k} <g>"));
        if self.dirtied {
            assert!(
                g >= self.gens[k],
                "{answer}: the host wrote {k} up to {}",
                self.gens[k]
            );
        } else {
            assert_eq!(answer, format!("WROTE {k} {}", self.gens[k]));
        }
        self.printed_generations(vm);
    }

    /// `A`: bumps every generation (16 MiB rewritten) and checks the guest's `WROTE all`.
    pub fn write_all(&mut self, vm: &ApiVm) {
        let answer = self.send(vm, Command::WriteAll);
        assert_eq!(answer.as_deref(), Some("WROTE all"));
        self.printed_generations(vm);
    }

    /// `v`: has the guest check every page and asserts `VERIFY ok` with exactly the
    /// generations its output printed before (a guest restored from an older snapshot
    /// verifies its own, older ones), which are the host's (while steady dirtying was never
    /// on) or above them.
    pub fn verify(&mut self, vm: &ApiVm) {
        let answer = self.send(vm, Command::Verify).expect("VERIFY");
        let output = self.output(vm);
        assert!(
            answer.starts_with("VERIFY ok "),
            "the guest's memory is not what it wrote: {answer}\n--- output ---\n{output}"
        );
        // Checks the answer against the generations printed before it, too.
        let printed = self.printed(&output[..self.answered]).gens;
        if self.dirtied {
            assert!(
                printed.iter().zip(&self.gens).all(|(p, g)| p >= g),
                "{answer}: below the host's generations {:?}\n--- output ---\n{output}",
                self.gens
            );
        } else {
            assert_eq!(
                answer,
                self.expected_verify(),
                "the guest's memory is not what the host wrote\n--- output ---\n{output}"
            );
        }
    }

    /// `D`: turns steady dirtying on or off (it must be the other way) and checks the answer.
    /// While on, the guest rewrites a sub-region at every count and prints its `WROTE` line.
    pub fn dirty(&mut self, vm: &ApiVm, on: bool) {
        assert_ne!(self.dirtying, on, "steady dirtying is already {on}");
        let answer = self.send(vm, Command::Dirty);
        let expected = if on { "DIRTY on" } else { "DIRTY off" };
        assert_eq!(answer.as_deref(), Some(expected));
        self.dirtying = on;
        self.dirtied |= on;
    }

    /// Whether steady dirtying is on, as the host last set it.
    pub fn dirtying(&self) -> bool {
        self.dirtying
    }

    /// `r`: the FNV-1a 64 of sectors 0..8 the guest read from its disk.
    pub fn disk_read(&mut self, vm: &ApiVm) -> u64 {
        let answer = self.device_answer(vm, Command::DiskRead);
        let hash = answer
            .strip_prefix("DISK ")
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        hash.unwrap_or_else(|| panic!("bad answer to r: {answer:?}"))
    }

    /// `w`: the guest writes `disk_sector(n)` to sector 8 for the next disk counter n;
    /// asserts `DISK wrote <n>` and returns n.
    pub fn disk_write(&mut self, vm: &ApiVm) -> u64 {
        let answer = self.device_answer(vm, Command::DiskWrite);
        let n = self.counters.disk_writes;
        assert_eq!(answer, format!("DISK wrote {n}"));
        n
    }

    /// `p`: the guest prints `CONSOLE <n>` on its virtio console for the next console
    /// counter n; asserts the same answer on the serial port and returns n.
    pub fn console(&mut self, vm: &ApiVm) -> u64 {
        let answer = self.device_answer(vm, Command::Console);
        let n = self.counters.console_lines;
        assert_eq!(answer, format!("CONSOLE {n}"));
        n
    }

    /// `s`: the guest connects to host port 5000, has `ping <n>` echoed and closes; asserts
    /// `VSOCK ok <n>` for the next vsock counter n and returns n.
    pub fn vsock(&mut self, vm: &ApiVm) -> u64 {
        let answer = self.device_answer(vm, Command::Vsock);
        let n = self.counters.vsock_pings;
        assert_eq!(answer, format!("VSOCK ok {n}"));
        n
    }

    /// `g`: the guest paints `screen_pixel(x, y, n)` for the next screen counter n; asserts
    /// `GPU drew <n>` and returns n.
    pub fn draw(&mut self, vm: &ApiVm) -> u64 {
        let answer = self.device_answer(vm, Command::Gpu);
        let n = self.counters.frames;
        assert_eq!(answer, format!("GPU drew {n}"));
        n
    }

    /// The device commands' counters as the host expects them (a command sent with
    /// [`SnapshotGuest::put`] counts from then on).
    pub fn counters(&self) -> DeviceCounters {
        self.counters
    }

    /// `i`: the input events the guest had pending, but EV_SYN, as (code, value).
    pub fn keys(&mut self, vm: &ApiVm) -> Vec<(u16, u32)> {
        let answer = self.device_answer(vm, Command::Keys);
        parse_keys(&answer).unwrap_or_else(|| panic!("bad answer to i: {answer:?}"))
    }

    /// `n`: the guest sends `net_frame(mac, n)` for the next net counter n; asserts
    /// `NET sent <n>` and returns n.
    pub fn net(&mut self, vm: &ApiVm) -> u64 {
        let answer = self.device_answer(vm, Command::Net);
        let n = self.counters.net_frames;
        assert_eq!(answer, format!("NET sent {n}"));
        n
    }

    /// `m`: the first frame of ours the guest's network device received since the last `m`,
    /// as (length, FNV-1a 64); `None` if none came.
    pub fn net_recv(&mut self, vm: &ApiVm) -> Option<(usize, u64)> {
        let answer = self.device_answer(vm, Command::NetRecv);
        let got = answer.strip_prefix("NET got ");
        if got == Some("none") {
            return None;
        }
        let parsed = got.and_then(|got| {
            let (len, hash) = got.split_once(' ')?;
            Some((len.parse().ok()?, u64::from_str_radix(hash, 16).ok()?))
        });
        Some(parsed.unwrap_or_else(|| panic!("bad answer to m: {answer:?}")))
    }

    /// Sends a device command and returns its answer, which must not be `NODEV`.
    fn device_answer(&mut self, vm: &ApiVm, command: Command) -> String {
        let answer = self.send(vm, command).expect("device commands answer");
        assert!(
            !answer.starts_with("NODEV "),
            "{command:?}: the guest has no such device ({answer})"
        );
        answer
    }

    /// `q`: the guest prints `PASS snapshot` and powers off; asserts that and petrel's exit
    /// status 0, and returns what petrel left.
    pub fn quit(&mut self, vm: &mut ApiVm) -> Output {
        self.send(vm, Command::Quit);
        let out = vm.finish(EXIT_TIMEOUT);
        let serial = vm.serial();
        assert!(
            serial.lines().any(|l| l == "PASS snapshot"),
            "no PASS snapshot\n{serial}\n{out}"
        );
        assert_eq!(out.status.code(), Some(0), "{out}");
        out
    }

    /// All the guest printed: the earlier processes' output up to the checkpoint this one was
    /// restored from, then the current process's serial log.
    pub fn output(&self, vm: &ApiVm) -> String {
        format!("{}{}", self.earlier, vm.serial())
    }

    /// The last complete `COUNT n` line in [`SnapshotGuest::output`].
    pub fn last_count(&self, vm: &ApiVm) -> Option<u64> {
        let output = self.output(vm);
        let complete = &output[..output.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("COUNT ")?.parse().ok())
    }

    /// Asserts that the `COUNT` lines in [`SnapshotGuest::output`] run from 0 with no gap, no
    /// repeat and no garbled line, and returns the last.
    pub fn assert_counts_continue(&self, vm: &ApiVm) -> u64 {
        let output = self.output(vm);
        match check_counts(&output) {
            Ok(Counts { first: 0, last }) => last,
            Ok(counts) => panic!("the counts start at {}, not 0:\n{output}", counts.first),
            Err(e) => panic!("{e}\n--- output ---\n{output}"),
        }
    }

    /// Waits until the current process printed `COUNT` lines `more` past the last one so far.
    pub fn wait_counts(&self, vm: &ApiVm, more: u64) -> u64 {
        let target = self
            .last_count(vm)
            .map_or(more.saturating_sub(1), |n| n + more);
        vm.wait_serial(Duration::from_secs(60), |l| {
            l.strip_prefix("COUNT ")?
                .parse::<u64>()
                .ok()
                .filter(|&n| n >= target)
        })
    }

    /// What the guest is at now, to be taken with a snapshot while the VM is paused (its
    /// serial output must be complete: nothing prints while paused).
    pub fn checkpoint(&self, vm: &ApiVm) -> Checkpoint {
        Checkpoint {
            gens: self.gens,
            counters: self.counters,
            dirtying: self.dirtying,
            dirtied: self.dirtied,
            output: self.output(vm),
            answered: self.answered,
        }
    }

    /// The guest goes on in a new petrel process restored from `at`'s snapshot, whose serial
    /// log starts empty: the host's generations and the output go back to the checkpoint's
    /// (what the guest printed after it, in the process the snapshot came from, is dropped).
    pub fn restored(&mut self, at: &Checkpoint) {
        self.gens = at.gens;
        self.counters = at.counters;
        self.dirtying = at.dirtying;
        self.dirtied = at.dirtied;
        self.earlier = at.output.clone();
        self.answered = at.answered;
    }

    /// The guest moved to a new petrel process by live migration: `source_output` is all the
    /// source process printed (its serial log, complete once it exited), and the new
    /// process's serial log goes on from there (a line cut by the move ends there). Nothing
    /// is dropped: unlike [`SnapshotGuest::restored`], the guest went on from its last state.
    pub fn migrated(&mut self, source_output: String) {
        assert!(
            self.answered <= self.earlier.len() + source_output.len(),
            "the host consumed output the source did not print"
        );
        self.earlier.push_str(&source_output);
    }
}

/// What a `snapshot` guest's output says it wrote.
#[derive(Clone, Debug, Default)]
pub struct Printed {
    /// The generations after the last complete `WROTE` line.
    pub gens: [u64; SUBREGIONS],
    /// Whether steady dirtying is on after the last complete `DIRTY` line.
    pub dirtying: bool,
    /// The complete lines, in order.
    pub lines: Vec<PrintedLine>,
}

/// A complete line of the output: `start..end` (with its `\n`), and whether it is steady
/// dirtying's `WROTE` line (the one right after a `COUNT` line while dirtying is on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrintedLine {
    pub start: usize,
    pub end: usize,
    pub tick: bool,
}

impl Printed {
    /// Walks the complete lines of `output` (all generations 0 at start) and checks that it
    /// agrees with itself: each `WROTE k g` is one generation above the last printed for k
    /// (`WROTE all`: every one up by one), each `VERIFY ok` names exactly the generations
    /// printed before it, and while steady dirtying is on each `COUNT n` is followed by
    /// `WROTE <n % 16> <g>`. A `WROTE` or `DIRTY` line that does not parse is garbled.
    pub fn scan(output: &str) -> Result<Printed, String> {
        let mut printed = Printed::default();
        let mut start = 0;
        // The `COUNT n` just before, while dirtying is on: the next line is its tick.
        let mut tick_due: Option<u64> = None;
        for (i, line) in output.split_inclusive('\n').enumerate() {
            let Some(text) = line.strip_suffix('\n') else {
                break;
            };
            let at = format!("line {}: {text:?}", i + 1);
            let mut tick = false;
            if let Some(n) = tick_due.take() {
                let k = (n % SUBREGIONS as u64) as usize;
                if !text.starts_with(&format!("WROTE {k} ")) {
                    return Err(format!(
                        "{at}: steady dirtying is on, but COUNT {n} is not followed by WROTE {k}"
                    ));
                }
                tick = true;
            }
            if text == "WROTE all" {
                printed.gens.iter_mut().for_each(|g| *g += 1);
            } else if text.contains("WROTE") {
                let (k, g) = text
                    .strip_prefix("WROTE ")
                    .and_then(|rest| rest.split_once(' '))
                    .and_then(|(k, g)| Some((k.parse::<usize>().ok()?, g.parse::<u64>().ok()?)))
                    .filter(|&(k, _)| k < SUBREGIONS)
                    .ok_or_else(|| format!("{at}: garbled WROTE line"))?;
                let last = printed.gens[k];
                if g != last + 1 {
                    let what = if g <= last {
                        "went backwards"
                    } else {
                        "skipped"
                    };
                    return Err(format!(
                        "{at}: sub-region {k} was last printed at generation {last}: the generation {what}"
                    ));
                }
                printed.gens[k] = g;
            } else if text.contains("DIRTY") {
                printed.dirtying = match text {
                    "DIRTY on" => true,
                    "DIRTY off" => false,
                    _ => return Err(format!("{at}: garbled DIRTY line")),
                };
            } else if let Some(list) = text.strip_prefix("VERIFY ok ") {
                let expected: Vec<String> = printed.gens.iter().map(u64::to_string).collect();
                if list != expected.join(",") {
                    return Err(format!(
                        "{at}: the generations printed before are {}",
                        expected.join(",")
                    ));
                }
            } else if let Some(n) = text.strip_prefix("COUNT ") {
                if printed.dirtying {
                    tick_due = n.parse().ok();
                }
            }
            printed.lines.push(PrintedLine {
                start,
                end: start + line.len(),
                tick,
            });
            start += line.len();
        }
        Ok(printed)
    }
}

/// The counters behind the device commands' answers (each command's first answer is 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    pub disk_writes: u64,
    pub console_lines: u64,
    pub vsock_pings: u64,
    pub frames: u64,
    pub net_frames: u64,
}

/// Parses `KEYS none` or `KEYS <code>:<value>,...`.
pub fn parse_keys(answer: &str) -> Option<Vec<(u16, u32)>> {
    let list = answer.strip_prefix("KEYS ")?;
    if list == "none" {
        return Some(Vec::new());
    }
    list.split(',')
        .map(|event| {
            let (code, value) = event.split_once(':')?;
            Some((code.parse().ok()?, value.parse().ok()?))
        })
        .collect()
}

/// The answer line `command` gets: what it starts with (`None`: no answer).
pub fn answer_prefix(command: Command) -> Option<&'static str> {
    match command {
        Command::Write(_) | Command::WriteAll => Some("WROTE "),
        Command::Verify => Some("VERIFY "),
        Command::Dirty => Some("DIRTY "),
        Command::Unknown(_) => Some("UNKNOWN "),
        Command::DiskRead | Command::DiskWrite => Some("DISK "),
        Command::Console => Some("CONSOLE "),
        Command::Vsock => Some("VSOCK "),
        Command::Gpu => Some("GPU drew "),
        Command::Keys => Some("KEYS "),
        Command::Net => Some("NET sent "),
        Command::NetRecv => Some("NET got "),
        Command::Topology => Some("TOPOLOGY "),
        Command::Quit | Command::Ignore => None,
    }
}

/// The `COUNT` lines of an output: the first and last numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub first: u64,
    pub last: u64,
}

/// Checks the complete `COUNT n` lines of `output` (a line being written at the end is left
/// out): each must be one more than the one before, and a line that mentions `COUNT` but is
/// not `COUNT <number>` is garbled (a restore that repeated or lost part of a line). Other
/// lines are ignored.
pub fn check_counts(output: &str) -> Result<Counts, String> {
    let complete = &output[..output.rfind('\n').map_or(0, |i| i + 1)];
    let mut counts: Option<Counts> = None;
    for (i, line) in complete.lines().enumerate() {
        if !line.contains("COUNT") {
            continue;
        }
        let n: u64 = line
            .strip_prefix("COUNT ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("line {}: garbled count line {line:?}", i + 1))?;
        counts = match counts {
            None => Some(Counts { first: n, last: n }),
            Some(c) if n == c.last + 1 => Some(Counts { last: n, ..c }),
            Some(c) => {
                let what = if n <= c.last { "a repeat" } else { "a gap" };
                return Err(format!(
                    "line {}: COUNT {} followed by COUNT {n}: {what}",
                    i + 1,
                    c.last
                ));
            }
        };
    }
    counts.ok_or_else(|| "no COUNT line".to_string())
}

/// Checks the scenario's region as a snapshot's memory holds it: `region` is the
/// [`REGION_SIZE`] bytes from guest-physical `REGION_START` on (for a flat memory file of a
/// guest under 3 GiB, the bytes at that file offset). Names the first page that differs.
pub fn check_region(region: &[u8], gens: &[u64; SUBREGIONS]) -> Result<(), String> {
    if region.len() as u64 != REGION_SIZE {
        return Err(format!(
            "{} bytes given, the region is {REGION_SIZE}",
            region.len()
        ));
    }
    let word = |offset: u64| {
        let at = offset as usize;
        u64::from_le_bytes(region[at..at + 8].try_into().expect("8 bytes"))
    };
    for (k, &g) in gens.iter().enumerate() {
        for page in 0..PAGES_PER_SUBREGION {
            let start = k as u64 * SUBREGION_SIZE + page * PAGE_SIZE;
            let (first, last) = page_words(k, g, page);
            for (offset, expected) in [(0, first), (LAST_WORD_OFFSET, last)] {
                let found = word(start + offset);
                if found != expected {
                    return Err(format!(
                        "sub-region {k} (generation {g}) page {page} offset {offset}: expected {expected:#x}, found {found:#x}"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use resources::snapshot_proto::page_addr;

    #[test]
    fn keys_answers_parse() {
        assert_eq!(parse_keys("KEYS none"), Some(vec![]));
        assert_eq!(parse_keys("KEYS 30:1,30:0"), Some(vec![(30, 1), (30, 0)]));
        assert_eq!(parse_keys("KEYS 30"), None);
        assert_eq!(parse_keys("DISK 0"), None);
    }

    #[test]
    fn counts_that_go_on_across_a_cut_line_pass() {
        // A pause between "COUN" and "T 2": the restored process prints the rest.
        let before =
            "SNAPSHOT ready region=0x4000000..0x5000000\nCOUNT 0\nCOUNT 1\nWROTE 3 1\nCOUN";
        let after = "T 2\nVERIFY ok 0,0\nCOUNT 3\nCOUNT 4\nCOU";
        assert_eq!(
            check_counts(&format!("{before}{after}")),
            Ok(Counts { first: 0, last: 4 })
        );
        assert_eq!(check_counts("COUNT 7\n"), Ok(Counts { first: 7, last: 7 }));
    }

    #[test]
    fn gaps_repeats_and_garbled_lines_fail() {
        let err = |s: &str| check_counts(s).unwrap_err();
        assert!(err("COUNT 0\nCOUNT 2\n").contains("COUNT 0 followed by COUNT 2: a gap"));
        assert!(err("COUNT 0\nCOUNT 1\nCOUNT 1\n").contains("a repeat"));
        // Restored from an older snapshot: the count goes back.
        assert!(err("COUNT 5\nCOUNT 6\nCOUNT 3\n").contains("a repeat"));
        // A restore that printed a line's start again.
        assert!(err("COUNT 0\nCOUNCOUNT 1\n").contains("line 2: garbled"));
        assert!(err("COUNT 0\nCOUNT 1x\n").contains("garbled"));
        assert_eq!(err("PASS snapshot\nCOUNT 3"), "no COUNT line");
    }

    #[test]
    fn printed_generations_follow_commands_and_steady_dirtying() {
        let output = "SNAPSHOT ready region=0x4000000..0x5000000\nCOUNT 0\nWROTE 3 1\n\
                      DIRTY on\nCOUNT 1\nWROTE 1 1\nWROTE 3 2\nCOUNT 2\nWROTE 2 1\nWROTE all\n\
                      DIRTY off\nCOUNT 3\nVERIFY ok 1,2,2,3,1,1,1,1,1,1,1,1,1,1,1,1\nCOUNT 4\nWRO";
        let printed = Printed::scan(output).unwrap();
        assert_eq!(
            printed.gens,
            [1, 2, 2, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        );
        assert!(!printed.dirtying);
        let ticks: Vec<&str> = printed
            .lines
            .iter()
            .filter(|l| l.tick)
            .map(|l| &output[l.start..l.end])
            .collect();
        assert_eq!(ticks, ["WROTE 1 1\n", "WROTE 2 1\n"]);
        // A line cut between two processes reads as one.
        let cut = "COUNT 0\nWROTE 3 1\nWRO".to_string() + "TE 3 2\nVERIFY ok 0,0,0,2";
        assert_eq!(Printed::scan(&cut).unwrap().gens[3], 2);
    }

    #[test]
    fn output_from_an_older_state_than_printed_fails() {
        let err = |s: &str| Printed::scan(s).unwrap_err();
        // Restored from before the first write: the guest writes generation 1 again.
        assert!(err("WROTE 3 1\nWROTE 3 2\nWROTE 3 2\n").contains("went backwards"));
        assert!(err("WROTE 3 2\n").contains("skipped"));
        // Its region verifies, but at older generations than it printed.
        assert!(
            err("WROTE 3 1\nVERIFY ok 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n")
                .contains("the generations printed before are 0,0,0,1,")
        );
        // Steady dirtying lost: a count without its write.
        assert!(err("DIRTY on\nCOUNT 5\nCOUNT 6\n").contains("COUNT 5 is not followed by WROTE 5"));
        assert!(err("WROTE 3 1x\n").contains("garbled WROTE"));
        assert!(err("DIRTY maybe\n").contains("garbled DIRTY"));
    }

    #[test]
    fn a_region_written_like_the_guest_checks_and_a_changed_word_is_named() {
        let mut gens = [0u64; SUBREGIONS];
        gens[3] = 2;
        let mut region = vec![0u8; REGION_SIZE as usize];
        let base = page_addr(0, 0);
        for (k, &g) in gens.iter().enumerate() {
            for page in 0..PAGES_PER_SUBREGION {
                let at = (page_addr(k, page) - base) as usize;
                let (first, last) = page_words(k, g, page);
                region[at..at + 8].copy_from_slice(&first.to_le_bytes());
                let end = at + LAST_WORD_OFFSET as usize;
                region[end..end + 8].copy_from_slice(&last.to_le_bytes());
            }
        }
        assert_eq!(check_region(&region, &gens), Ok(()));
        let mut older = gens;
        older[3] = 1;
        let err = check_region(&region, &older).unwrap_err();
        assert!(
            err.starts_with("sub-region 3 (generation 1) page 0 offset 0"),
            "{err}"
        );
        let at = (page_addr(9, 17) - base + LAST_WORD_OFFSET) as usize;
        region[at] ^= 1;
        let err = check_region(&region, &gens).unwrap_err();
        assert!(
            err.starts_with("sub-region 9 (generation 0) page 17 offset 4088"),
            "{err}"
        );
        assert!(check_region(&region[1..], &gens).is_err());
    }
}
