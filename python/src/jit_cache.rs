//! JIT-compiled modules kept across calls. An LLVM context and the modules
//! compiled in it are not `Send`, so one worker thread per model owns them:
//! calls send it a graph and inputs and wait for the outputs (with the GIL
//! released). A graph is compiled the first time it is run and kept while the
//! model lives; the worker ends when the model is dropped.

use reformc_backend_llvm::{BackendError, CompileOptions, Context, JitModel};
use reformc_ir::Graph;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use reformc_tensor::Tensor;

/// Named tensors.
type Tensors = BTreeMap<String, Tensor>;

/// One run for the worker: the graph (its `Arc` identity is the cache key),
/// the inputs, and where the outputs go.
struct Job {
    graph: Arc<Graph>,
    inputs: Tensors,
    reply: Sender<Result<Tensors, BackendError>>,
}

/// The worker thread of one model, started on its first JIT run.
pub struct JitCache {
    weights: Arc<Tensors>,
    opts: CompileOptions,
    jobs: Mutex<Option<Sender<Job>>>,
    compiled: Arc<AtomicUsize>,
}

impl JitCache {
    /// A cache for a model with these weights, compiling with `opts`; no
    /// thread yet.
    pub fn new(weights: Arc<Tensors>, opts: CompileOptions) -> Self {
        JitCache {
            weights,
            opts,
            jobs: Mutex::new(None),
            compiled: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many modules the worker has JIT-compiled so far.
    pub fn compilations(&self) -> usize {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Runs `graph` on `inputs`, compiling it on its first run. Runs of one
    /// model take turns on its worker (each run uses every kernel thread).
    pub fn run(&self, graph: &Arc<Graph>, inputs: Tensors) -> Result<Tensors, BackendError> {
        let (reply, answer) = channel();
        let job = Job {
            graph: graph.clone(),
            inputs,
            reply,
        };
        self.sender()
            .send(job)
            .map_err(|_| BackendError::Internal("the JIT worker thread has stopped".into()))?;
        answer.recv().map_err(|_| {
            BackendError::Internal("the JIT worker thread stopped during the run".into())
        })?
    }

    /// The worker's queue, starting the worker on first use.
    fn sender(&self) -> Sender<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.get_or_insert_with(|| {
            let (tx, rx) = channel();
            let (weights, compiled) = (self.weights.clone(), self.compiled.clone());
            let opts = self.opts.clone();
            std::thread::spawn(move || worker(rx, &weights, &opts, &compiled));
            tx
        })
        .clone()
    }
}

/// Serves jobs until every sender is gone (the model was dropped).
fn worker(jobs: Receiver<Job>, weights: &Tensors, opts: &CompileOptions, compiled: &AtomicUsize) {
    let ctx = Context::create();
    let mut models: Vec<(Arc<Graph>, JitModel<'_>)> = Vec::new();
    for job in jobs {
        let known = models.iter().position(|(g, _)| Arc::ptr_eq(g, &job.graph));
        let index = match known {
            Some(i) => i,
            None => match JitModel::with_options(&ctx, &job.graph, weights, opts) {
                Ok(m) => {
                    compiled.fetch_add(1, Ordering::Relaxed);
                    models.push((job.graph.clone(), m));
                    models.len() - 1
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                    continue;
                }
            },
        };
        // A caller that gave up (its thread died) no longer listens: ignored.
        let _ = job.reply.send(models[index].1.run(&job.inputs));
    }
}
