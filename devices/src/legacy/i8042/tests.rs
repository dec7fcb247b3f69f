//! The i8042, driven the way Linux's i8042 and atkbd drivers and the host drive it.

use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;

fn i8042() -> (I8042, Arc<ExitSignal>) {
    let exit = Arc::new(ExitSignal::new().unwrap());
    let dev = I8042::new(exit.clone(), EventFd::new(EFD_NONBLOCK).unwrap());
    (dev, exit)
}

fn command(dev: &mut I8042, cmd: u8) {
    dev.write(COMMAND, &[cmd]);
}

fn write_data(dev: &mut I8042, value: u8) {
    dev.write(DATA, &[value]);
}

fn status(dev: &mut I8042) -> u8 {
    let mut b = [0];
    dev.read(COMMAND, &mut b);
    b[0]
}

/// Reads the data port while the status says the output buffer is full.
fn drain(dev: &mut I8042) -> Vec<u8> {
    let mut out = Vec::new();
    while status(dev) & STATUS_OUTPUT_FULL != 0 {
        let mut b = [0];
        dev.read(DATA, &mut b);
        out.push(b[0]);
    }
    out
}

/// Interrupts raised since the last call.
fn interrupts(dev: &I8042) -> u64 {
    dev.interrupt().read().unwrap_or(0)
}

#[test]
fn power_on_status_has_system_flag_and_empty_buffers() {
    let (mut dev, _) = i8042();
    assert_eq!(status(&mut dev), STATUS_UNLOCKED | CTR_SYSTEM);
    command(&mut dev, CMD_KBD_DISABLE);
    assert_ne!(status(&mut dev) & STATUS_LAST_WAS_COMMAND, 0);
    write_data(&mut dev, KBD_ECHO);
    assert_eq!(status(&mut dev) & STATUS_LAST_WAS_COMMAND, 0);
}

#[test]
fn linux_probe_passes_self_tests_and_finds_no_aux_port() {
    let (mut dev, exit) = i8042();
    command(&mut dev, CMD_SELF_TEST);
    assert_eq!(drain(&mut dev), [SELF_TEST_OK]);
    command(&mut dev, CMD_KBD_TEST);
    assert_eq!(drain(&mut dev), [INTERFACE_TEST_OK]);
    command(&mut dev, CMD_READ_CTR);
    let ctr = drain(&mut dev)[0];
    command(&mut dev, CMD_WRITE_CTR);
    write_data(&mut dev, (ctr | CTR_KBD_DISABLED) & !CTR_KBD_INT);
    command(&mut dev, CMD_READ_CTR);
    assert_eq!(drain(&mut dev), [(ctr | CTR_KBD_DISABLED) & !CTR_KBD_INT]);

    // Aux loopback echoes the byte as aux data, ...
    command(&mut dev, CMD_WRITE_AUX_OUT);
    write_data(&mut dev, 0x5a);
    assert_ne!(status(&mut dev) & STATUS_AUX_DATA, 0);
    assert_eq!(drain(&mut dev), [0x5a]);
    // ... but the aux port cannot be enabled: Linux concludes there is none.
    command(&mut dev, CMD_AUX_DISABLE);
    command(&mut dev, CMD_AUX_ENABLE);
    command(&mut dev, CMD_READ_CTR);
    assert_ne!(drain(&mut dev)[0] & CTR_AUX_DISABLED, 0);
    assert_eq!(exit.reason(), None);
}

#[test]
fn pulsing_the_reset_line_resets_the_vm() {
    let (mut dev, exit) = i8042();
    command(&mut dev, 0xff); // pulses no line
    assert_eq!(exit.reason(), None);
    command(&mut dev, 0xfe);
    assert_eq!(exit.reason(), Some(VmExit::Reset));
}

#[test]
fn writing_the_output_port_resets_only_when_the_reset_bit_is_low() {
    let (mut dev, exit) = i8042();
    command(&mut dev, CMD_READ_OUTP);
    assert_eq!(drain(&mut dev), [OUTP_NOT_RESET | OUTP_A20]);
    command(&mut dev, CMD_WRITE_OUTP);
    write_data(&mut dev, 0xdf); // A20 on, as boot loaders write it
    assert_eq!(exit.reason(), None);
    command(&mut dev, CMD_WRITE_OUTP);
    write_data(&mut dev, 0xde);
    assert_eq!(exit.reason(), Some(VmExit::Reset));
}

#[test]
fn controller_mode_and_keyboard_enable_read_back() {
    let (mut dev, _) = i8042();
    command(&mut dev, CMD_READ_MODE);
    assert_eq!(drain(&mut dev), [MODE_PS2]);
    command(&mut dev, CMD_WRITE_MODE);
    write_data(&mut dev, 0);
    command(&mut dev, CMD_READ_MODE);
    assert_eq!(drain(&mut dev), [0]);
    command(&mut dev, CMD_KBD_DISABLE);
    assert_ne!(dev.save().control & CTR_KBD_DISABLED, 0);
    command(&mut dev, CMD_KBD_ENABLE);
    assert_eq!(dev.save().control & CTR_KBD_DISABLED, 0);
}

#[test]
fn keyboard_identifies_itself_with_one_interrupt_per_byte() {
    let (mut dev, _) = i8042();
    write_data(&mut dev, KBD_GET_ID);
    let mut got = Vec::new();
    while interrupts(&dev) == 1 {
        let mut b = [0];
        dev.read(DATA, &mut b);
        got.push(b[0]);
    }
    assert_eq!(got, [KBD_ACK, 0xab, 0x83]);
    assert_eq!(status(&mut dev) & STATUS_OUTPUT_FULL, 0);
}

#[test]
fn keyboard_acknowledges_commands_and_their_parameters() {
    let (mut dev, _) = i8042();
    write_data(&mut dev, KBD_SET_LEDS);
    write_data(&mut dev, 0x02);
    assert_eq!(drain(&mut dev), [KBD_ACK, KBD_ACK]);
    write_data(&mut dev, KBD_SCANCODE_SET);
    write_data(&mut dev, 0);
    assert_eq!(drain(&mut dev), [KBD_ACK, KBD_ACK, KBD_SCANCODE_SET_2]);
    write_data(&mut dev, KBD_RESET);
    assert_eq!(drain(&mut dev), [KBD_ACK, KBD_SELF_TEST_OK]);
    write_data(&mut dev, 0xf4); // enable scanning
    assert_eq!(drain(&mut dev), [KBD_ACK]);
}

#[test]
fn ctrl_alt_del_queues_set2_presses_then_releases_and_interrupts() {
    let (mut dev, exit) = i8042();
    dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(interrupts(&dev), 1);
    assert_eq!(
        drain(&mut dev),
        [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]
    );
    assert_eq!(
        exit.reason(),
        None,
        "the guest decides what Ctrl+Alt+Del does"
    );
}

#[test]
fn ctrl_alt_del_is_in_set1_when_the_guest_translates() {
    let (mut dev, _) = i8042();
    command(&mut dev, CMD_WRITE_CTR);
    write_data(&mut dev, CTR_TRANSLATE | CTR_SYSTEM | CTR_KBD_INT);
    dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(
        drain(&mut dev),
        [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]
    );
}

#[test]
fn ctrl_alt_del_does_not_interrupt_a_guest_that_polls() {
    let (mut dev, _) = i8042();
    command(&mut dev, CMD_WRITE_CTR);
    write_data(&mut dev, CTR_SYSTEM);
    dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(interrupts(&dev), 0);
    assert_eq!(drain(&mut dev).len(), CTRL_ALT_DEL_SET2.len());
}

#[test]
fn ctrl_alt_del_that_does_not_fit_queues_nothing() {
    let (mut dev, _) = i8042();
    for _ in 0..6 {
        command(&mut dev, CMD_WRITE_KBD_OUT);
        write_data(&mut dev, 0x42);
    }
    assert_eq!(
        dev.trigger_ctrl_alt_del(),
        Err(I8042Error::BufferFull {
            needed: 11,
            free: 10
        })
    );
    assert_eq!(drain(&mut dev), [0x42; 6]);
}

#[test]
fn a_guest_that_never_reads_replies_loses_the_newest() {
    let (mut dev, _) = i8042();
    for _ in 0..I8042_BUFFER_SIZE + 4 {
        command(&mut dev, CMD_SELF_TEST);
    }
    assert_eq!(drain(&mut dev), [SELF_TEST_OK; I8042_BUFFER_SIZE]);
}

#[test]
fn unknown_commands_and_wide_accesses_change_nothing() {
    let (mut dev, exit) = i8042();
    let before = dev.save();
    command(&mut dev, 0x05);
    dev.write(COMMAND, &[CMD_SELF_TEST, 0]);
    dev.write(2, &[CMD_SELF_TEST]);
    let mut wide = [0; 2];
    dev.read(DATA, &mut wide);
    assert_eq!(wide, [0xff; 2]);
    assert_eq!(dev.save().output, before.output);
    assert_eq!(exit.reason(), None);
}

#[test]
fn restore_rebuilds_the_controller_and_refuses_an_oversized_buffer() {
    let (mut dev, exit) = i8042();
    write_data(&mut dev, KBD_GET_ID);
    let state = dev.save();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut restored = I8042::restore(&state, exit.clone(), irq).unwrap();
    assert_eq!(
        interrupts(&restored),
        1,
        "pending keyboard data interrupts again"
    );
    assert_eq!(drain(&mut restored), [KBD_ACK, 0xab, 0x83]);

    let mut big = state;
    big.output = vec![(0, OutputSource::Keyboard); I8042_BUFFER_SIZE + 1].into();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    assert_eq!(
        I8042::restore(&big, exit, irq).err(),
        Some(I8042Error::BufferOverflow { len: 17 })
    );
}

#[test]
fn no_guest_access_panics() {
    let (mut dev, _) = i8042();
    for offset in [0, 1, 2, 3, 4, 5, u64::MAX] {
        for len in 0..=4 {
            for value in 0..=255u8 {
                dev.write(offset, &vec![value; len]);
                dev.read(offset, &mut vec![0; len]);
            }
        }
    }
}
