use std::time::{Duration, Instant};

use devices::Bus;

use super::*;
use crate::vstate::pause::PauseGate;
use crate::vstate::test_vm::{test_vm, ENTRY};

fn context() -> VcpuContext {
    VcpuContext {
        pio: Arc::new(Bus::new()),
        mmio: Arc::new(Bus::new()),
        exit: Arc::new(ExitSignal::new().unwrap()),
        stop: Arc::new(AtomicBool::new(false)),
        pause: Arc::new(PauseGate::default()),
        exits: vec![ExitCounters::default()].into(),
    }
}

/// Waits until the vCPU is inside KVM_RUN (its fd locked by its thread): the guest halts
/// there with interrupts off.
fn wait_until_running(handle: &VcpuHandle) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.fd.try_lock().is_ok() {
        assert!(Instant::now() < deadline, "vCPU never entered KVM_RUN");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn stop_and_join(handle: VcpuHandle, ctx: &VcpuContext) {
    ctx.stop.store(true, Ordering::Release);
    ctx.pause.wake_all();
    handle.kick();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !handle.is_finished() {
        assert!(Instant::now() < deadline, "vCPU thread did not stop");
        handle.kick();
        std::thread::sleep(Duration::from_millis(1));
    }
    handle.join();
}

#[test]
fn running_vcpu_refuses_save_and_paused_one_is_saved_from_the_vmm_thread() {
    let Some(t) = test_vm() else { return };
    install_kick_handler().unwrap();
    let vcpu = t.boot_vcpu(0);
    {
        let fd = vcpu.fd_for_test();
        let mut regs = fd.get_regs().unwrap();
        regs.rbx = 0x5eed_5eed;
        fd.set_regs(&regs).unwrap();
    }
    let ctx = context();
    let handle = vcpu.start(ctx.clone()).unwrap();

    wait_until_running(&handle);
    let err = handle.save_state().unwrap_err();
    assert!(err.to_string().contains("pause the VM"), "{err}");

    // Pause requested, but the vCPU is not out of KVM_RUN yet.
    ctx.pause.request();
    assert!(matches!(
        handle.save_state(),
        Err(VcpuError::NotPaused { id: 0 })
    ));
    handle.kick();
    assert!(ctx.pause.wait_parked(|| 1, Duration::from_secs(10)));
    let saved = handle.save_state().unwrap();
    assert_eq!(saved.regs.rbx, 0x5eed_5eed);
    assert!(
        (ENTRY..ENTRY + 3).contains(&saved.regs.rip),
        "rip {:#x}",
        saved.regs.rip
    );

    // What the parked thread's vCPU held is a complete state: a new VM takes it.
    let Some(t2) = test_vm() else { return };
    let restored = Vcpu::restore(&t2.vm, 0, &saved).unwrap();
    assert_eq!(restored.save_state().unwrap().regs, saved.regs);

    // Resumed, the vCPU runs again, and the kick still gets it out of KVM_RUN to stop.
    ctx.pause.release();
    wait_until_running(&handle);
    stop_and_join(handle, &ctx);
}

/// A port that asks the VM to pause while the guest reads it, as a pause request that
/// arrives during an `IN` exit.
struct PausingPort(Arc<PauseGate>);

impl devices::BusDevice for PausingPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        self.0.request();
        data.fill(0x42);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[test]
fn a_vcpu_paused_during_port_io_is_saved_after_the_instruction() {
    let Some(t) = test_vm() else { return };
    install_kick_handler().unwrap();
    // in al, 0x10; hlt; jmp $-3
    t.set_code(&[0xe4, 0x10, 0xf4, 0xeb, 0xfd]);
    let vcpu = t.boot_vcpu(0);
    let mut ctx = context();
    let mut pio = Bus::new();
    pio.insert(
        Arc::new(Mutex::new(PausingPort(ctx.pause.clone()))),
        0x10,
        1,
    )
    .unwrap();
    ctx.pio = Arc::new(pio);
    let handle = vcpu.start(ctx.clone()).unwrap();
    assert!(ctx.pause.wait_parked(|| 1, Duration::from_secs(10)));
    let saved = handle.save_state().unwrap();
    // KVM finished the IN before the vCPU parked: the value is in al and rip is past it.
    assert_eq!(saved.regs.rax & 0xff, 0x42);
    assert_eq!(saved.regs.rip, ENTRY + 2);
    ctx.pause.release();
    stop_and_join(handle, &ctx);
}
