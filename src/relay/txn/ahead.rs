//! Reading ahead while a Kafka transaction commits.
//!
//! `commit_transaction` flushes the transaction's messages and waits for the
//! coordinator; librdkafka allows no send meanwhile. It runs on a blocking
//! thread ([`crate::sink::transactional::TxnSink::commit`]) and the session
//! keeps taking events off the stream during it, queued here in order, so
//! the walsender and the replication worker never wait for a commit; after
//! the commit the session handles them before anything new, each with the
//! time it arrived: a Kafka transaction is due an interval after its first
//! event arrived ([`super::TxnSession::began`]), so an event read during a
//! commit does not wait that commit *and* a whole interval more.
//!
//! Nothing here is acknowledged or confirmed: a session that ends drops the
//! queue, and the next one reads those events again from its resume point.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::error::{RelayError, Result};
use crate::ports::SourceEvent;

/// At most this many events wait (a few MB); the replication worker's own
/// channel and the socket buffers hold more behind it.
const MAX_EVENTS: usize = 8192;

/// Events read during a commit, not yet handled.
#[derive(Default)]
pub(super) struct ReadAhead {
    events: VecDeque<(Instant, SourceEvent)>,
    /// The stream failed or ended while reading ahead: reported once the
    /// events before it are handled.
    end: Option<RelayError>,
}

impl ReadAhead {
    /// Whether another event may be read.
    pub(super) fn has_room(&self) -> bool {
        self.end.is_none() && self.events.len() < MAX_EVENTS
    }

    /// Queue what the stream returned.
    pub(super) fn push(&mut self, ev: Result<Option<SourceEvent>>) {
        match ev.and_then(super::super::ended) {
            Ok(ev) => self.events.push_back((Instant::now(), ev)),
            Err(e) => self.end = Some(e),
        }
    }

    /// The oldest queued event with its arrival time, then the stream's end
    /// if it ended; `None` when nothing is queued.
    pub(super) fn next(&mut self) -> Option<Result<(Instant, SourceEvent)>> {
        match self.events.pop_front() {
            Some(x) => Some(Ok(x)),
            None => self.end.take().map(Err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_back_in_order_then_the_end() {
        let mut a = ReadAhead::default();
        a.push(Ok(Some(SourceEvent::KeepAlive { wal_end: 1 })));
        a.push(Ok(Some(SourceEvent::KeepAlive { wal_end: 2 })));
        a.push(Ok(None));
        assert!(!a.has_room(), "nothing is read after the end");
        let lsn = |x: Option<Result<(Instant, SourceEvent)>>| match x {
            Some(Ok((_, SourceEvent::KeepAlive { wal_end }))) => wal_end,
            _ => panic!("expected an event"),
        };
        assert_eq!(lsn(a.next()), 1);
        assert_eq!(lsn(a.next()), 2);
        assert!(matches!(a.next(), Some(Err(_))));
        assert!(a.next().is_none());
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut a = ReadAhead::default();
        for i in 0..MAX_EVENTS as u64 {
            assert!(a.has_room());
            a.push(Ok(Some(SourceEvent::KeepAlive { wal_end: i })));
        }
        assert!(!a.has_room());
    }
}
