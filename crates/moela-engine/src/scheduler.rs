//! The server's side of the engine: one worker thread owns an [`Engine`] and steps it while
//! there is work; callers talk to it through a cloneable [`EngineHandle`], whose `submit`
//! returns a channel of [`Event`]s. Dropping the receiver cancels the request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use moela_model::Model;
use moela_text::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::engine::{
    check_request, Engine, EngineConfig, EngineStats, Event, Failure, Job, Request, SubmitError,
};

/// A cloneable handle to the engine worker.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    stats: Arc<EngineStats>,
    config: Arc<EngineConfig>,
    closing: Arc<AtomicBool>,
    /// Set by [`EngineHandle::abort_all`]; the worker clears it when done.
    abort: Arc<AtomicBool>,
    worker: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl EngineHandle {
    /// Starts the worker thread.
    pub fn start(model: Arc<Model>, tokenizer: Tokenizer, config: EngineConfig) -> EngineHandle {
        let (tx, rx) = mpsc::channel();
        let closing = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let engine = Engine::new(model, Some(tokenizer), config.clone());
        let stats = engine.stats().clone();
        let w = Worker {
            engine,
            closing: closing.clone(),
            abort: abort.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("moela-engine".into())
            .spawn(move || w.run(rx))
            .ok();
        EngineHandle {
            tx,
            stats,
            config: Arc::new(config),
            closing,
            abort,
            worker: Arc::new(std::sync::Mutex::new(handle)),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Queues a request; its events arrive on the returned channel.
    pub fn submit(&self, req: Request) -> Result<UnboundedReceiver<Event>, SubmitError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        check_request(&self.config, &self.stats, true, &req)?;
        let (tx, rx) = unbounded_channel();
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Job { req, tx }).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(rx)
    }

    /// Ends every queued and running request now with [`Failure::Busy`] ("the server is
    /// shutting down") and refuses new ones: a drain that ran out of time.
    pub fn abort_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.abort.store(true, Ordering::SeqCst);
    }

    /// Stops accepting requests, lets running and queued ones finish, then joins the worker.
    pub fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // Other handle clones keep the job channel open, so the worker cannot see it close: it
        // polls `closing` while idle.
        let handle = self.worker.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

struct Worker {
    engine: Engine,
    closing: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            if self.abort.swap(false, Ordering::SeqCst) {
                while let Ok(job) = rx.try_recv() {
                    self.engine.enqueue(job);
                }
                self.engine
                    .abort_all(Failure::Busy("the server is shutting down".into()));
            }
            // Intake: block while idle, otherwise take whatever arrived.
            if self.engine.is_idle() {
                match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                    Ok(job) => self.engine.enqueue(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if self.closing.load(Ordering::SeqCst) {
                            return;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.engine.enqueue(job);
            }
            self.engine.step();
        }
    }
}
