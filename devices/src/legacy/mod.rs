//! Legacy PC devices on the port-I/O bus: the 16550 UART, the i8042 PS/2 controller, the
//! MC146818 RTC/CMOS, and the ACPI sleep control / reset register; and on the MMIO bus the
//! ACPI Generic Event Device that carries the power button.

pub mod ged;
pub mod i8042;
pub mod pm;
pub mod rtc;
pub mod serial;
pub mod trigger;

pub use ged::{
    Ged, GedError, GedState, GED_POWER_BUTTON, GED_STATUS_LEN, GED_STATUS_OFFSET, GED_WINDOW_LEN,
};
pub use i8042::{
    I8042Error, I8042State, OutputSource, I8042, I8042_BUFFER_SIZE, I8042_IRQ, I8042_PORT,
    I8042_PORT_LEN,
};
pub use pm::{PowerManagement, PM_PORT, PM_PORT_LEN, RESET_VALUE, S5_SLP_TYP, SLEEP_ENABLE};
pub use rtc::{
    host_clock, Clock, Rtc, RtcError, RtcState, CMOS_SIZE, RTC_IRQ, RTC_PORT, RTC_PORT_LEN,
};
pub use serial::log::{LogChunk, LoggedOutput, SerialLog, SharedSerialLog, SERIAL_LOG_SIZE};
pub use serial::{
    Serial, SerialError, SerialOutput, SerialOutputError, SerialState, SERIAL_FIFO_SIZE,
    SERIAL_IRQ, SERIAL_PORT, SERIAL_PORT_LEN,
};
pub use trigger::EventFdTrigger;
