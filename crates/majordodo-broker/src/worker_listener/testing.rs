//! Connections without a socket, for tests of the dispatcher: what the listener would hand the
//! dispatcher, and what the dispatcher would have it write.

use std::sync::Arc;

use majordodo_proto::worker::Assignment;
use tokio::sync::{mpsc, oneshot, watch};

use super::session::{Outbound, Stop};
use super::{Admission, ConnId, Outgoing, Rejection, WorkerSession};

/// What the dispatcher did with a fake connection.
#[derive(Debug, PartialEq)]
pub(crate) enum Frame {
    Assign(Vec<Assignment>),
    FinishedAck(u64),
    CodePoolData(majordodo_proto::worker::CodePoolData),
    Cancel(Vec<(u64, u32)>),
}

/// The listener's side of one fake connection.
pub(crate) struct FakeConnection {
    /// The admission decision.
    pub(crate) admitted: oneshot::Receiver<Result<Option<[u8; 32]>, Rejection>>,
    outbound: mpsc::Receiver<Outbound>,
    stop: watch::Receiver<Option<Stop>>,
}

impl FakeConnection {
    /// A connection `conn` of `worker_id` with an outbound queue of `queue` frames, and the
    /// admission to hand the dispatcher in a `Connected` event.
    pub(crate) fn new(conn: ConnId, worker_id: &str, queue: usize) -> (Admission, FakeConnection) {
        let (reply, admitted) = oneshot::channel();
        let (outbound_tx, outbound) = mpsc::channel(queue);
        let (stop_tx, stop) = watch::channel(None);
        let session = WorkerSession::new(
            conn,
            Arc::from(worker_id),
            outbound_tx,
            Arc::new(stop_tx),
            16 * 1024 * 1024,
        );
        (
            Admission::new(reply, session),
            FakeConnection {
                admitted,
                outbound,
                stop,
            },
        )
    }

    /// Frames queued so far, in order.
    pub(crate) fn frames(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Ok(frame) = self.outbound.try_recv() {
            out.push(match frame {
                Outbound::Assign(a) => {
                    Frame::Assign(a.into_iter().map(Outgoing::into_inline).collect())
                }
                Outbound::FinishedAck(seq) => Frame::FinishedAck(seq),
                Outbound::CodePoolData(d) => Frame::CodePoolData(*d),
                Outbound::Cancel(tasks) => Frame::Cancel(tasks),
            });
        }
        out
    }

    /// Whether the dispatcher asked to close or kill the connection.
    pub(crate) fn closed_by_broker(&self) -> bool {
        self.stop.borrow().is_some()
    }
}
