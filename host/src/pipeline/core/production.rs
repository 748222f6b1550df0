//! The delivery core's production half: the broker's answers for the
//! records of a message, what a refusal for now or for good does, what is
//! handed to the producer next, and which offset is stored.

use std::time::{Duration, Instant};

use super::*;

/// The longest wait before records refused for now are produced again.
const MAX_REFUSED_DELAY: Duration = Duration::from_millis(6400);

impl<M: Item, R> Core<M, R> {
    /// The broker's answers for production `generation` of the message at
    /// `offset`. Stale answers (the records were produced again since)
    /// are ignored.
    pub fn answered<E: Env<M, R>>(
        &mut self,
        now: Instant,
        offset: i64,
        generation: u32,
        answer: Answer,
        env: &mut E,
    ) {
        let Some(i) = self.find(offset) else { return };
        let entry = &self.entries[i];
        if entry.state != State::Producing || entry.generation != generation {
            return;
        }
        match answer {
            Answer::RefusedForGood(reason) => self.refused_for_good(i, now, reason, env),
            Answer::RefusedForNow(reason) => self.refused_for_now(i, now, reason),
            Answer::Acked => {
                self.entries[i].state = State::Acked;
                if self.hold.is_none() {
                    self.refusals = 0;
                }
                self.store_done();
            }
        }
        self.trim_draining();
        self.produce_ready(now);
    }

    /// A record refused for good: an output fails its message (dead-lettered
    /// like any failure); a dead letter stops the partition on it.
    fn refused_for_good<E: Env<M, R>>(
        &mut self,
        i: usize,
        now: Instant,
        reason: String,
        env: &mut E,
    ) {
        let offset = self.entries[i].offset;
        if self.entries[i].dead_letter {
            self.note(Note::DeadLetterRefused {
                offset,
                reason: reason.clone(),
            });
            let kind = StopKind::LetterRefused(now + REFUSED_RETRY);
            let error_type = self.entries[i]
                .failed
                .as_ref()
                .map_or(ErrorType::InvalidOutput, |f| f.kind.error_type());
            let why = format!("{error_type}: its dead letter could not be produced: {reason}");
            self.stop(i, kind, why);
            return;
        }
        let failed = Failed {
            kind: FailureKind::InvalidOutput,
            reason: format!("an output could not be produced: {reason}"),
        };
        self.give_up(i, failed, env);
    }

    /// A record refused for now: the message's records are produced again
    /// (and after them the outputs of every later message already
    /// produced) after a delay that grows with the refusals in a row.
    fn refused_for_now(&mut self, i: usize, now: Instant, reason: String) {
        let offset = self.entries[i].offset;
        if self.draining {
            // Not stored: delivered again after the restart.
            self.truncate(i);
            return;
        }
        self.refusals = self.refusals.saturating_add(1);
        let delay = Duration::from_millis(100)
            .saturating_mul(1 << self.refusals.min(6))
            .min(MAX_REFUSED_DELAY);
        let at = now + delay;
        self.hold = Some(self.hold.map_or(at, |h| h.max(at)));
        // Produced again, the later messages' outputs after it.
        self.set_ready(i);
        self.note(Note::Refused {
            offset,
            delay,
            reason,
        });
    }

    /// Hands every message whose records are ready to the producer, in
    /// order, unless a refusal holds production. When a message's outputs are
    /// produced after later messages' outputs were (it was called again
    /// after a stop), those are produced again after them, so that per key
    /// the last copies stay in input order.
    pub(super) fn produce_ready(&mut self, now: Instant) {
        match self.hold {
            Some(at) if at > now => return,
            Some(_) => self.hold = None,
            None => {}
        }
        let mut i = self.ready_from;
        while i < self.entries.len() {
            let entry = &mut self.entries[i];
            i += 1;
            match entry.state {
                State::Ready => {}
                State::Producing | State::Acked => continue,
                // Nothing after a message not handled yet is produced.
                _ => {
                    i -= 1;
                    break;
                }
            }
            entry.generation += 1;
            if entry.records.is_empty() {
                entry.state = State::Acked;
                continue;
            }
            entry.state = State::Producing;
            let (offset, generation) = (entry.offset, entry.generation);
            self.actions.push(Action::Produce { offset, generation });
            if !entry.dead_letter && offset < self.last_produced {
                self.produce_again_after(i - 1);
            }
            self.last_produced = self.last_produced.max(offset);
        }
        self.ready_from = i;
        self.store_done();
    }

    /// Marks the outputs of every message after `i` already produced to be
    /// produced again, after those of `i`.
    fn produce_again_after(&mut self, i: usize) {
        for entry in self.entries.range_mut(i + 1..) {
            if !entry.dead_letter && matches!(entry.state, State::Producing | State::Acked) {
                entry.state = State::Ready;
            }
        }
    }

    /// Stores the offset of the last message of the acknowledged prefix.
    pub(super) fn store_done(&mut self) {
        let mut last = None;
        let mut messages = 0;
        while self
            .entries
            .front()
            .is_some_and(|e| e.state == State::Acked)
        {
            last = self.entries.pop_front().map(|e| e.offset);
            messages += 1;
        }
        self.ready_from = self.ready_from.saturating_sub(messages);
        if let Some(offset) = last
            && !self.revoked
        {
            self.stored = Some(offset);
            self.actions.push(Action::Store { offset, messages });
        }
    }
}
