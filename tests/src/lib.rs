//! End-to-end tests that boot guests under KVM with the real `petrel` binary. The tests
//! live in `tests/tests/`; this library holds the harness they share.
