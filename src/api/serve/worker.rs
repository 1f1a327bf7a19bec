//! The engine thread of `ferrolm serve`: it owns the runtime, the tokenizer and the chat
//! template, and runs one batched step after another while requests are in flight, taking the
//! HTTP side's commands between steps (new requests join the batch at the next step). Requests
//! whose client went away are cancelled before the next step, so their KV blocks come back.

use std::collections::HashMap;
use std::sync::mpsc;

use serde::Serialize;
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::openai::{ApiError, NamedLogprob};
use crate::api::request::{encode_input, GenerateRequest, Input};
use crate::api::Runtime;
use crate::chat::ChatTemplate;
use crate::engine::{EngineStats, Event, Request, RequestId, RequestStats};
use crate::error::Error;
use crate::sample::{FinishReason, Generation};
use crate::tokenizer::Tokenizer;

/// What the engine reports for one request.
#[derive(Debug)]
pub enum Update {
    /// Text that became final (possibly empty while held back for a stop string).
    Token {
        text: String,
    },
    Done {
        generation: Box<Generation>,
        stats: RequestStats,
        logprobs: Vec<NamedLogprob>,
    },
    /// The request failed after it was accepted (the device was lost, the server shut down).
    Failed(ApiError),
}

/// An accepted request: its id and the receiver of its updates.
pub struct Submitted {
    pub id: RequestId,
    pub updates: tmpsc::UnboundedReceiver<Update>,
}

/// The server's counters, with the engine's own figures.
#[derive(Clone, Debug, Serialize)]
pub struct ServerStats {
    pub engine: EngineStats,
    /// Requests accepted by the engine.
    pub requests: u64,
    /// Requests that ended with `stop` or `length`.
    pub finished: u64,
    /// Requests cancelled because their client disconnected or gave up (and at shutdown).
    pub cancelled: u64,
    /// Requests that failed in a step (the device was lost).
    pub failed: u64,
    pub generated_tokens: u64,
    /// The most requests that produced a token in one step (above 1: batching).
    pub max_batch: usize,
    /// Set once the GPU device was lost: the engine cannot run again.
    pub device_lost: bool,
}

enum Command {
    Submit { input: Input, req: Box<GenerateRequest>, reply: oneshot::Sender<Result<Submitted, ApiError>> },
    Cancel(RequestId),
    CancelAll,
    Stats(oneshot::Sender<ServerStats>),
    LoseDevice(oneshot::Sender<Result<(), ApiError>>),
}

/// The HTTP side's handle on the engine thread; the thread ends when every handle is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
}

fn gone() -> ApiError {
    ApiError::unavailable("the engine has stopped (the server is shutting down)")
}

impl EngineHandle {
    /// Starts the engine thread and loads the model on it with `load` (GPU models stay on the
    /// thread that made them); returns once it is loaded, with the runtime's description.
    pub fn start<F>(load: F) -> crate::Result<(EngineHandle, std::thread::JoinHandle<()>, String)>
    where
        F: FnOnce() -> crate::Result<(Runtime, Tokenizer, Option<ChatTemplate>)> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let (ready, loaded) = mpsc::channel();
        let thread = std::thread::Builder::new().name("ferrolm-engine".into()).spawn(move || match load() {
            Ok((runtime, tokenizer, template)) => {
                let _ = ready.send(Ok(format!("{} | context {}", runtime.describe(), runtime.context())));
                Worker { runtime, tokenizer, template, streams: HashMap::new(), stats: Counters::default() }.run(rx)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        })?;
        match loaded.recv() {
            Ok(Ok(describe)) => Ok((EngineHandle { tx }, thread, describe)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::InvalidModel("the engine thread stopped while loading the model".into())),
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Queues a request (checked and tokenized on the engine thread).
    pub async fn submit(&self, input: Input, req: GenerateRequest) -> Result<Submitted, ApiError> {
        self.ask(|reply| Command::Submit { input, req: Box::new(req), reply }).await?
    }

    /// Ends a request now; its KV blocks go back to the pool.
    pub fn cancel(&self, id: RequestId) {
        let _ = self.tx.send(Command::Cancel(id));
    }

    /// Ends every request in flight (shutdown after the grace period).
    pub fn cancel_all(&self) {
        let _ = self.tx.send(Command::CancelAll);
    }

    pub async fn stats(&self) -> Result<ServerStats, ApiError> {
        self.ask(Command::Stats).await
    }

    /// Fault injection (`--faults`): destroys the GPU device as a driver reset would.
    pub async fn lose_device(&self) -> Result<(), ApiError> {
        self.ask(Command::LoseDevice).await?
    }
}

#[derive(Default)]
struct Counters {
    requests: u64,
    finished: u64,
    cancelled: u64,
    failed: u64,
    generated_tokens: u64,
    max_batch: usize,
    lost: Option<ApiError>,
}

struct Worker {
    runtime: Runtime,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    streams: HashMap<RequestId, tmpsc::UnboundedSender<Update>>,
    stats: Counters,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            // Idle: sleep until a command comes (or every handle is gone); busy: take what came.
            if self.runtime.is_idle() {
                match rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            let closed: Vec<RequestId> = self.streams.iter().filter(|(_, tx)| tx.is_closed()).map(|(&id, _)| id).collect();
            for id in closed {
                self.cancel(id);
            }
            if !self.runtime.is_idle() {
                self.step();
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit { input, req, reply } => {
                if let Err(Ok(s)) = reply.send(self.submit(input, *req)) {
                    // The caller left before the reply: nobody will read this request.
                    self.cancel(s.id);
                }
            }
            Command::Cancel(id) => self.cancel(id),
            Command::CancelAll => {
                let ids: Vec<RequestId> = self.streams.keys().copied().collect();
                for id in ids {
                    if let Some(tx) = self.streams.get(&id) {
                        let _ = tx.send(Update::Failed(ApiError::unavailable("the server shut down before this request finished")));
                    }
                    self.cancel(id);
                }
            }
            Command::Stats(reply) => {
                let s = &self.stats;
                let _ = reply.send(ServerStats {
                    engine: self.runtime.stats(),
                    requests: s.requests,
                    finished: s.finished,
                    cancelled: s.cancelled,
                    failed: s.failed,
                    generated_tokens: s.generated_tokens,
                    max_batch: s.max_batch,
                    device_lost: s.lost.is_some(),
                });
            }
            Command::LoseDevice(reply) => {
                let _ = reply.send(self.runtime.lose_device().map_err(|e| ApiError::from(&e)));
            }
        }
    }

    fn submit(&mut self, input: Input, req: GenerateRequest) -> Result<Submitted, ApiError> {
        if let Some(lost) = &self.stats.lost {
            return Err(lost.clone());
        }
        let tools = req.tools().to_vec();
        let opts = req.into_options().map_err(|e| ApiError::from(&e))?;
        let prompt = encode_input(&self.tokenizer, self.template.as_ref(), &input, &tools, self.runtime.context()).map_err(|e| ApiError::from(&e))?;
        let id = self.runtime.submit(&self.tokenizer, Request { prompt, opts }).map_err(|e| ApiError::from(&e))?;
        let (tx, updates) = tmpsc::unbounded_channel();
        self.streams.insert(id, tx);
        self.stats.requests += 1;
        Ok(Submitted { id, updates })
    }

    fn cancel(&mut self, id: RequestId) {
        if self.streams.remove(&id).is_some() && self.runtime.cancel(&self.tokenizer, id).is_some() {
            self.stats.cancelled += 1;
        }
    }

    /// The text of each token in a generation's logprobs.
    fn name_logprobs(&self, generation: &Generation) -> Vec<NamedLogprob> {
        let name = |id: u32| self.tokenizer.decode(&[id]).unwrap_or_default();
        generation.logprobs.iter().map(|l| NamedLogprob { token: name(l.token), logprob: l.logprob, top: l.top.iter().map(|&(t, p)| (name(t), p)).collect() }).collect()
    }

    fn step(&mut self) {
        let events = match pollster::block_on(self.runtime.step(&self.tokenizer)) {
            Ok(events) => events,
            Err(e) => {
                // A failed step fails every request in flight; a lost device fails every later one.
                let err = ApiError::from(&e);
                if matches!(e, Error::DeviceLost(_)) {
                    self.stats.lost = Some(err.clone());
                }
                for (id, tx) in std::mem::take(&mut self.streams) {
                    let _ = tx.send(Update::Failed(err.clone()));
                    self.runtime.cancel(&self.tokenizer, id);
                    self.stats.failed += 1;
                }
                return;
            }
        };
        let mut batch: Vec<RequestId> = Vec::new();
        for e in events {
            match e {
                Event::Token { id, text, .. } => {
                    if !batch.contains(&id) {
                        batch.push(id);
                    }
                    self.stats.generated_tokens += 1;
                    if let Some(tx) = self.streams.get(&id) {
                        let _ = tx.send(Update::Token { text });
                    }
                }
                Event::Done { id, generation, stats } => {
                    if let Some(tx) = self.streams.remove(&id) {
                        if generation.finish_reason == FinishReason::Cancelled {
                            self.stats.cancelled += 1;
                        } else {
                            self.stats.finished += 1;
                        }
                        let logprobs = self.name_logprobs(&generation);
                        let _ = tx.send(Update::Done { generation, stats, logprobs });
                    }
                }
            }
        }
        self.stats.max_batch = self.stats.max_batch.max(batch.len());
    }
}
