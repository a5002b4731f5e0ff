//! The reply sink: outputs of HTTP requests go back to the waiting client; every other frame
//! goes to the run's own sink (a folder, stdout, a stream), when there is one.
//!
//! With `run --http` alone there is no other sink: every frame is a request. With `--input`
//! and `--output` too, both kinds of frame share the pipeline and part here, so an ordered
//! sink (stdout) only ever sees its own source's sequence numbers.

use super::{Output, Sink};
use crate::error::{Error, Result};
use crate::frame::FrameId;
use crate::source::http::{Reply, Requests};

pub struct WithReplies {
    main: Option<Box<dyn Sink>>,
    requests: Requests,
}

impl WithReplies {
    pub fn new(main: Option<Box<dyn Sink>>, requests: Requests) -> Self {
        Self { main, requests }
    }

    fn main(&mut self, id: &FrameId) -> Result<&mut Box<dyn Sink>> {
        self.main
            .as_mut()
            .ok_or_else(|| Error::Other(format!("{id}: no sink for frames that are not requests")))
    }
}

impl Sink for WithReplies {
    fn write(&mut self, out: Output) -> Result<()> {
        match out.id {
            FrameId::Request { n } => {
                self.requests.reply(
                    n,
                    Reply::Done {
                        version: out.version,
                        files: out.files,
                    },
                );
                Ok(())
            }
            _ => self.main(&out.id.clone())?.write(out),
        }
    }

    fn skip(&mut self, seq: u64, id: &FrameId) -> Result<()> {
        match id {
            // Its failure was answered already (the completion saw it first); a request
            // dropped by overload is answered here.
            FrameId::Request { n } => {
                self.requests
                    .reply(*n, Reply::Failed(format!("{id}: dropped")));
                Ok(())
            }
            _ => self.main(id)?.skip(seq, id),
        }
    }

    fn finish(&mut self) -> Result<()> {
        match &mut self.main {
            Some(m) => m.finish(),
            None => Ok(()),
        }
    }

    fn settles(&self, id: &FrameId) -> bool {
        match (&self.main, id) {
            (_, FrameId::Request { .. }) | (None, _) => false,
            (Some(m), _) => m.settles(id),
        }
    }
}
