//! The delivery core's clock and life: timers that come due, module and
//! config changes that release what was stopped on, the drain at shutdown
//! and the revocation of the partition.

use std::time::Instant;

use super::*;

impl<M: Item, R> Core<M, R> {
    /// The clock: retries whose backoff ended are queued again, dead letters
    /// refused for good are written again, records held after a refusal are
    /// produced.
    pub fn tick<E: Env<M, R>>(&mut self, now: Instant, env: &mut E) {
        for i in 0..self.entries.len() {
            match self.entries[i].state {
                State::Backoff(at) if at <= now => {
                    self.entries[i].state = State::Queued;
                    self.queued += 1;
                    self.timers -= 1;
                }
                State::Stopped(StopKind::LetterRefused(at)) if at <= now => {
                    self.resume_letter(i, env);
                }
                _ => {}
            }
        }
        self.produce_ready(now);
    }

    /// When the core next needs [`Core::tick`].
    pub fn next_wake(&self) -> Option<Instant> {
        if self.timers == 0 {
            return self.hold;
        }
        // Timers are on messages not handled, from the production cursor.
        let timers = self
            .entries
            .range(self.ready_from..)
            .filter_map(|e| match e.state {
                State::Backoff(at) | State::Stopped(StopKind::LetterRefused(at)) => Some(at),
                _ => None,
            });
        timers.chain(self.hold).min()
    }

    /// A new version of the route's module: a message the partition stopped
    /// on for want of a dead-letter topic is called again.
    pub fn module_changed(&mut self) {
        for i in 0..self.entries.len() {
            if self.entries[i].state == State::Stopped(StopKind::NoDeadLetter) {
                self.resume_call(i);
            }
        }
    }

    /// The route's config changed: every message the partition stopped on
    /// is tried again with it.
    pub fn config_changed<E: Env<M, R>>(&mut self, now: Instant, env: &mut E) {
        for i in 0..self.entries.len() {
            match self.entries[i].state {
                State::Stopped(StopKind::NoDeadLetter) => self.resume_call(i),
                State::Stopped(StopKind::LetterRefused(_)) => self.resume_letter(i, env),
                _ => {}
            }
        }
        self.produce_ready(now);
    }

    pub(super) fn resume_call(&mut self, i: usize) {
        let entry = &mut self.entries[i];
        entry.state = State::Queued;
        entry.failed = None;
        self.queued += 1;
        let offset = entry.offset;
        self.note(Note::Resumed { offset });
    }

    /// Writes a refused dead letter again (with the route as it is now), or
    /// calls the message again if the route no longer has a dead-letter
    /// topic... in which case it stops again on failure.
    pub(super) fn resume_letter<E: Env<M, R>>(&mut self, i: usize, env: &mut E) {
        self.timers -= 1;
        let offset = self.entries[i].offset;
        self.note(Note::Resumed { offset });
        match self.entries[i].failed.clone() {
            Some(failed) if env.has_dead_letter_topic() => self.write_letter(i, failed, env),
            _ => self.resume_call(i),
        }
    }

    /// The daemon is stopping: nothing more is called; messages not handled
    /// (or waiting for a retry, or stopped on) are dropped unstored and
    /// delivered again after the restart, while the records already handed
    /// to the producer are waited for.
    pub fn drain(&mut self) {
        self.draining = true;
        let keep = self
            .entries
            .iter()
            .position(|e| !matches!(e.state, State::Producing | State::Acked))
            .unwrap_or(self.entries.len());
        self.truncate(keep);
        self.hold = None;
        self.store_done();
    }

    /// The partition went to another consumer: everything not stored is
    /// forgotten (the new owner delivers it again) and nothing more is
    /// stored, whatever answers come later.
    pub fn revoke(&mut self) {
        self.revoked = true;
        self.draining = true;
        self.truncate(0);
        self.hold = None;
    }
}
