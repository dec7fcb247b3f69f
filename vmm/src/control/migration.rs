//! The VMM thread's side of live migration: starting one, reporting it, and the work its
//! threads hand back (the source's final phase, the destination's received machine).

use api::types::{MigrationInfo, MigrationReceiveParams, MigrationSendParams};
use api::ApiResponse;

use super::{ControlHandler, Pending};
use crate::migrate::{finish, receive, send, Migration, Role};

impl ControlHandler {
    /// `PUT /migration/send`: starts sending the running machine.
    pub(super) fn send_migration(
        &mut self,
        params: &MigrationSendParams,
    ) -> Result<(), ApiResponse> {
        let rt = self
            .runtime
            .clone()
            .ok_or_else(|| ApiResponse::error(500, "the VM has no machine"))?;
        let (progress, outgoing) = send::start(
            rt,
            &self.instance.config,
            params,
            self.migration_wake.clone(),
        )?;
        self.migration = Some(Migration {
            progress,
            role: Role::Send(outgoing),
        });
        Ok(())
    }

    /// `PUT /migration/receive`: listens for a machine like the configured one.
    pub(super) fn receive_migration(
        &mut self,
        params: &MigrationReceiveParams,
    ) -> Result<(), ApiResponse> {
        if self.start.is_some() {
            return Err(ApiResponse::bad_request(
                "PUT /migration/receive: the VM is being started already",
            ));
        }
        let (progress, incoming) =
            receive::start(&self.instance.config, params, self.migration_wake.clone())?;
        self.migration = Some(Migration {
            progress,
            role: Role::Receive(incoming),
        });
        Ok(())
    }

    /// `GET /migration`.
    pub(super) fn migration_info(&self) -> MigrationInfo {
        match &self.migration {
            Some(m) => m.progress.info(),
            None => MigrationInfo {
                role: "none".into(),
                state: "idle".into(),
                ..MigrationInfo::default()
            },
        }
    }

    /// A migration's thread has handed work back.
    pub(super) fn migration_event(&mut self) {
        let _ = self.migration_wake.read();
        let Some(migration) = &mut self.migration else {
            return;
        };
        match &mut migration.role {
            Role::Send(outgoing) => {
                let Some(outcome) = outgoing.take_handover() else {
                    return;
                };
                match (outcome, &self.runtime) {
                    (Ok(handover), Some(rt)) => finish(rt, handover, &migration.progress),
                    // Pre-copy failed (and said why, unless its thread vanished); the machine
                    // ran on all along.
                    (Err(e), _) => {
                        if migration.progress.is_active() {
                            migration.progress.fail(e);
                        }
                    }
                    (Ok(_), None) => migration.progress.fail("the VM has no machine".into()),
                }
            }
            Role::Receive(incoming) => {
                if let Some(arrival) = incoming.take_arrival() {
                    self.start = Some(arrival.started);
                    self.pending = Some(Pending::Migrated(arrival.machine));
                }
            }
        }
    }
}
