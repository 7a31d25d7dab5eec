//! The pass manager: runs a [`Pipeline`] of registered passes with MLIR-style
//! instrumentation, verifying the IR after every pass.
//!
//! ```
//! use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};
//! let mut g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[B,L,8]\n %1 = exp %0 : f32[B,L,8]\n output \"y\" = %1\n}").unwrap();
//! let instr = Instrumentation { print_after: ["memory-plan".to_string()].into(), quiet: true, ..Default::default() };
//! let pm = PassManager::new(Pipeline::parse("attention,memory-plan").unwrap(), instr).unwrap();
//! let mut out = Vec::new();
//! let report = pm.run(&mut g, &PassOptions::default(), &mut out).unwrap();
//! assert_eq!(report.records.len(), 2);
//! let text = String::from_utf8(out).unwrap();
//! assert!(text.starts_with("// -----// IR Dump After memory-plan (2/2) //----- //\ngraph {"));
//! ```

use crate::pass::{Pass, PassError, PassOptions, PassStats};
use crate::registry::{lookup, pass_names, DEFAULT_PIPELINE};
use reformc_ir::Graph;
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// An ordered list of pass names: a pipeline as data.
///
/// ```
/// use reformc_passes::Pipeline;
/// let p = Pipeline::parse("attention, memory-plan").unwrap();
/// assert_eq!(p.passes, vec!["attention", "memory-plan"]);
/// let err = Pipeline::parse("attention,frobnicate").unwrap_err();
/// assert!(err.to_string().contains("unknown pass `frobnicate`"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipeline {
    /// Registered pass names in the order they run; a name may appear more
    /// than once.
    pub passes: Vec<String>,
}

impl Pipeline {
    /// [`DEFAULT_PIPELINE`] restricted to the passes registered today.
    pub fn default_pipeline() -> Pipeline {
        let known = pass_names();
        Pipeline {
            passes: DEFAULT_PIPELINE
                .iter()
                .filter(|n| known.contains(n))
                .map(|n| n.to_string())
                .collect(),
        }
    }

    /// A pipeline from names; every name must be registered.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Pipeline, PipelineError> {
        let passes: Vec<String> = names
            .iter()
            .map(|s| s.as_ref().trim().to_string())
            .collect();
        for p in &passes {
            check_known("the pipeline", p)?;
        }
        Ok(Pipeline { passes })
    }

    /// Parses a comma-separated list (`simplify,attention,memory-plan`).
    pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        let names: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        Pipeline::new(&names)
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline::default_pipeline()
    }
}

/// A pipeline that cannot be built or run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PipelineError {
    /// A pass name that is not registered, in the option that named it.
    UnknownPass {
        /// Where the name came from (`the pipeline`, `--print-after`, ...).
        option: String,
        /// The unknown name.
        name: String,
        /// Every registered pass name, for the message.
        known: Vec<String>,
    },
    /// `stop_after` names a registered pass that is not in the pipeline.
    NotInPipeline {
        /// The option that named it (`--stop-after`).
        option: String,
        /// The pass name.
        name: String,
        /// The pipeline's pass names, for the message.
        pipeline: Vec<String>,
    },
    /// A pass failed, or the IR did not verify after it.
    Pass(PassError),
    /// Writing output or dump files failed.
    Io(String),
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipelineError::UnknownPass {
                option,
                name,
                known,
            } => write!(
                f,
                "unknown pass `{name}` in {option} (known passes: {})",
                known.join(", ")
            ),
            PipelineError::NotInPipeline {
                option,
                name,
                pipeline,
            } => write!(
                f,
                "pass `{name}` in {option} is not in the pipeline ({})",
                pipeline.join(", ")
            ),
            PipelineError::Pass(e) => e.fmt(f),
            PipelineError::Io(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PipelineError {}

impl From<PassError> for PipelineError {
    fn from(e: PassError) -> Self {
        PipelineError::Pass(e)
    }
}

fn check_known(option: &str, name: &str) -> Result<(), PipelineError> {
    let known = pass_names();
    if known.contains(&name) {
        Ok(())
    } else {
        Err(PipelineError::UnknownPass {
            option: option.into(),
            name: name.into(),
            known: known.iter().map(|s| s.to_string()).collect(),
        })
    }
}

/// What the pass manager prints, dumps, skips and measures (the CLI's
/// `--print-after-all`, `--print-after=NAME`, `--print-changed`,
/// `--dump-dir=DIR`, `--disable-pass=NAME`, `--stop-after=NAME`,
/// `--time-passes`, `-q`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instrumentation {
    /// Print the IR after every pass.
    pub print_after_all: bool,
    /// Print the IR after these passes.
    pub print_after: BTreeSet<String>,
    /// Print only when the pass changed the IR (alone: after every pass that did).
    pub print_changed: bool,
    /// Write `00-input.ir` and one `NN-name.ir` per pass run into this directory.
    pub dump_dir: Option<PathBuf>,
    /// Skip these passes.
    pub disable: BTreeSet<String>,
    /// Stop after this pass.
    pub stop_after: Option<String>,
    /// Print a timing report at the end.
    pub time_passes: bool,
    /// No progress lines or notes.
    pub quiet: bool,
}

/// What happened in one pass.
#[derive(Clone, Debug, PartialEq)]
pub struct PassRecord {
    /// The pass's registered name.
    pub name: String,
    /// 1-based position in the pipeline.
    pub index: usize,
    /// Skipped through `disable`.
    pub skipped: bool,
    /// The pass's notes for the user (decisions and why).
    pub notes: Vec<String>,
    /// The statistics the pass reported (empty when it reports none or was
    /// skipped).
    pub stats: PassStats,
    /// Wall time of the pass itself.
    pub elapsed: Duration,
    /// Wall time of the verifier run after it.
    pub verify_time: Duration,
    /// Whether the printed IR differs from before.
    pub changed: bool,
    /// Ops (regions included) before the pass.
    pub ops_before: usize,
    /// Ops (regions included) after the pass; `ops_before` when skipped.
    pub ops_after: usize,
}

/// The records of a pipeline run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineReport {
    /// One record per pass that ran or was skipped, in pipeline order (up to
    /// the `stop_after` pass).
    pub records: Vec<PassRecord>,
    /// Wall time of the whole run.
    pub total: Duration,
    /// The pass `stop_after` stopped at.
    pub stopped_after: Option<String>,
}

impl PipelineReport {
    /// All notes, each prefixed with its pass name (`attention: layer 0: ...`).
    pub fn notes(&self) -> Vec<String> {
        self.records
            .iter()
            .flat_map(|r| r.notes.iter().map(move |n| format!("{}: {n}", r.name)))
            .collect()
    }

    /// The record of pass `name`, if it ran or was skipped.
    pub fn record(&self, name: &str) -> Option<&PassRecord> {
        self.records.iter().find(|r| r.name == name)
    }

    /// The `--time-passes` report (MLIR style).
    pub fn timing_report(&self) -> String {
        let total = self.total.as_secs_f64().max(1e-9);
        let mut s = String::new();
        s.push_str(
            "===-------------------------------------------------------------------------===\n",
        );
        s.push_str("                       ... Pass execution timing report ...\n");
        s.push_str(
            "===-------------------------------------------------------------------------===\n",
        );
        s.push_str(&format!(
            "  Total Execution Time: {:.4} seconds\n\n",
            self.total.as_secs_f64()
        ));
        s.push_str("   ----Wall Time----  ----Name----\n");
        let mut verify = Duration::ZERO;
        for r in &self.records {
            if r.skipped {
                s.push_str(&format!(
                    "   {:>8}  {:>6}  {} (disabled)\n",
                    "-", "", r.name
                ));
                continue;
            }
            let t = r.elapsed.as_secs_f64();
            s.push_str(&format!(
                "   {t:8.4} ({:5.1}%)  {}\n",
                100.0 * t / total,
                r.name
            ));
            let mut detail: Vec<String> = r
                .stats
                .phases
                .iter()
                .map(|(n, d)| format!("{n} {:.3}ms", d.as_secs_f64() * 1e3))
                .collect();
            detail.extend(
                r.stats
                    .counters
                    .iter()
                    .map(|(n, c)| format!("{n} {}", thousands(*c))),
            );
            if let Some(n) = r.stats.nodes {
                detail.push(format!("{} nodes", thousands(n)));
            }
            if let Some(reason) = &r.stats.stop_reason {
                detail.push(format!("stop: {reason}"));
            }
            if !detail.is_empty() {
                s.push_str(&format!("                      {}\n", detail.join(", ")));
            }
            verify += r.verify_time;
        }
        let v = verify.as_secs_f64();
        s.push_str(&format!(
            "   {v:8.4} ({:5.1}%)  (verifier)\n",
            100.0 * v / total
        ));
        s.push_str(&format!(
            "   {:8.4} (100.0%)  Total\n",
            self.total.as_secs_f64()
        ));
        s
    }
}

impl Progress<'_> {
    /// Prints the line and each of the pass's notes (indented) to stderr, as
    /// the CLI shows a pipeline's progress.
    pub fn eprint(&self) {
        eprintln!("{self}");
        for n in &self.record.notes {
            eprintln!("    {n}");
        }
    }
}

/// One progress line: `[3/7] simplify 1.2s: 14,003 nodes, saturated`.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress<'a> {
    /// 1-based position of the pass in the pipeline.
    pub index: usize,
    /// Number of passes in the pipeline.
    pub total: usize,
    /// What happened in the pass.
    pub record: &'a PassRecord,
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.record;
        write!(f, "[{}/{}] {}", self.index, self.total, r.name)?;
        if r.skipped {
            return f.write_str(" skipped (disabled)");
        }
        write!(f, " {}: ", fmt_duration(r.elapsed))?;
        match r.stats.nodes {
            Some(n) => write!(f, "{} nodes", thousands(n))?,
            None => write!(f, "{} ops", thousands(r.ops_after as u64))?,
        }
        if let Some(reason) = &r.stats.stop_reason {
            write!(f, ", {reason}")?;
        }
        if !r.changed {
            f.write_str(" (unchanged)")?;
        }
        Ok(())
    }
}

/// What the observer of [`PassManager::run_with`] sees.
pub enum PassEvent<'a> {
    /// Before pass `name` (1-based `index`) runs on `graph`.
    Before {
        /// 1-based position of the pass in the pipeline.
        index: usize,
        /// The pass's name.
        name: &'a str,
        /// The graph the pass is about to transform.
        graph: &'a Graph,
    },
    /// After it ran (and verified), or was skipped.
    After {
        /// 1-based position of the pass in the pipeline.
        index: usize,
        /// The pass's name.
        name: &'a str,
        /// The graph after the pass (as it was, when skipped).
        graph: &'a Graph,
        /// What happened in the pass.
        record: &'a PassRecord,
    },
}

/// `1234567` as `1,234,567`.
///
/// ```
/// assert_eq!(reformc_passes::manager::thousands(14003), "14,003");
/// ```
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 0.1 {
        format!("{s:.1}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Runs a pipeline of registered passes.
pub struct PassManager {
    pipeline: Pipeline,
    passes: Vec<Box<dyn Pass>>,
    instr: Instrumentation,
}

impl PassManager {
    /// Checks every name in `pipeline` and `instr` against the registry;
    /// unknown names are an error listing the known ones.
    pub fn new(pipeline: Pipeline, instr: Instrumentation) -> Result<PassManager, PipelineError> {
        for p in &pipeline.passes {
            check_known("the pipeline", p)?;
        }
        for p in &instr.print_after {
            check_known("--print-after", p)?;
        }
        for p in &instr.disable {
            check_known("--disable-pass", p)?;
        }
        if let Some(p) = &instr.stop_after {
            check_known("--stop-after", p)?;
            if !pipeline.passes.contains(p) {
                return Err(PipelineError::NotInPipeline {
                    option: "--stop-after".into(),
                    name: p.clone(),
                    pipeline: pipeline.passes.clone(),
                });
            }
        }
        let mut passes = Vec::with_capacity(pipeline.passes.len());
        for name in &pipeline.passes {
            // A fresh instance per occurrence: a pass may appear twice.
            let pass = lookup(name).ok_or_else(|| PipelineError::UnknownPass {
                option: "the pipeline".into(),
                name: name.clone(),
                known: pass_names().iter().map(|s| s.to_string()).collect(),
            })?;
            passes.push(pass);
        }
        Ok(PassManager {
            pipeline,
            passes,
            instr,
        })
    }

    /// The pipeline this manager runs.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Runs the pipeline on `g`. IR dumps, progress lines, notes and the timing
    /// report are written to `out` (progress and notes unless `quiet`).
    pub fn run(
        &self,
        g: &mut Graph,
        opts: &PassOptions,
        out: &mut dyn Write,
    ) -> Result<PipelineReport, PipelineError> {
        let quiet = self.instr.quiet;
        let mut progress = |p: &Progress<'_>, out: &mut dyn Write| -> std::io::Result<()> {
            if !quiet {
                writeln!(out, "{p}")?;
                for n in &p.record.notes {
                    writeln!(out, "    {n}")?;
                }
            }
            Ok(())
        };
        self.run_inner(g, opts, out, &mut progress, &mut |_| {})
    }

    /// Like [`PassManager::run`], but progress lines go to `progress` (for
    /// example stderr while IR goes to stdout) and `observe` sees the graph
    /// before and after every pass. `quiet` still silences `progress`.
    pub fn run_with(
        &self,
        g: &mut Graph,
        opts: &PassOptions,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(&Progress<'_>),
        observe: &mut dyn FnMut(PassEvent<'_>),
    ) -> Result<PipelineReport, PipelineError> {
        let quiet = self.instr.quiet;
        let mut p = |x: &Progress<'_>, _: &mut dyn Write| -> std::io::Result<()> {
            if !quiet {
                progress(x);
            }
            Ok(())
        };
        self.run_inner(g, opts, out, &mut p, observe)
    }

    fn run_inner(
        &self,
        g: &mut Graph,
        opts: &PassOptions,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(&Progress<'_>, &mut dyn Write) -> std::io::Result<()>,
        observe: &mut dyn FnMut(PassEvent<'_>),
    ) -> Result<PipelineReport, PipelineError> {
        let io =
            |e: std::io::Error| PipelineError::Io(format!("cannot write pass manager output: {e}"));
        let start = Instant::now();
        reformc_ir::verify(g).map_err(|e| PassError {
            pass: "input".into(),
            message: format!("the input IR does not verify: {e}"),
        })?;
        if let Some(dir) = &self.instr.dump_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                PipelineError::Io(format!(
                    "cannot create dump directory {}: {e}",
                    dir.display()
                ))
            })?;
            write_file(dir, "00-input.ir", &reformc_ir::print(g))?;
        }
        let total = self.passes.len();
        let mut report = PipelineReport::default();
        let needs_text = self.instr.print_changed
            || self.instr.print_after_all
            || !self.instr.print_after.is_empty()
            || self.instr.dump_dir.is_some();
        for (i, pass) in self.passes.iter().enumerate() {
            let index = i + 1;
            let name = pass.name();
            let ops_before = g.walk().len();
            if self.instr.disable.contains(name) {
                let record = PassRecord {
                    name: name.into(),
                    index,
                    skipped: true,
                    notes: vec![],
                    stats: PassStats::default(),
                    elapsed: Duration::ZERO,
                    verify_time: Duration::ZERO,
                    changed: false,
                    ops_before,
                    ops_after: ops_before,
                };
                progress(
                    &Progress {
                        index,
                        total,
                        record: &record,
                    },
                    out,
                )
                .map_err(io)?;
                observe(PassEvent::After {
                    index,
                    name,
                    graph: g,
                    record: &record,
                });
                report.records.push(record);
                continue;
            }
            observe(PassEvent::Before {
                index,
                name,
                graph: g,
            });
            let before_text = needs_text.then(|| reformc_ir::print(g));
            let before = (!needs_text).then(|| g.clone());
            let t0 = Instant::now();
            let outcome = pass.run_with_stats(g, opts).map_err(|mut e| {
                if e.pass.is_empty() {
                    e.pass = name.into();
                }
                e
            })?;
            let elapsed = t0.elapsed();
            let t1 = Instant::now();
            if let Err(e) = reformc_ir::verify(g) {
                if let Some(dir) = &self.instr.dump_dir {
                    write_file(
                        dir,
                        &format!("{index:02}-{name}.invalid.ir"),
                        &reformc_ir::print(g),
                    )?;
                }
                return Err(PassError {
                    pass: name.into(),
                    message: format!("the IR does not verify after this pass: {e}"),
                }
                .into());
            }
            let verify_time = t1.elapsed();
            let after_text = needs_text.then(|| reformc_ir::print(g));
            let changed = match (&before_text, &after_text, &before) {
                (Some(b), Some(a), _) => a != b,
                (_, _, Some(b)) => b != g,
                _ => true,
            };
            let record = PassRecord {
                name: name.into(),
                index,
                skipped: false,
                notes: outcome.notes,
                stats: outcome.stats,
                elapsed,
                verify_time,
                changed,
                ops_before,
                ops_after: g.walk().len(),
            };
            progress(
                &Progress {
                    index,
                    total,
                    record: &record,
                },
                out,
            )
            .map_err(io)?;
            let asked = self.instr.print_after_all
                || self.instr.print_after.contains(name)
                || (self.instr.print_changed && self.instr.print_after.is_empty());
            if asked && (!self.instr.print_changed || changed) {
                writeln!(
                    out,
                    "// -----// IR Dump After {name} ({index}/{total}) //----- //"
                )
                .map_err(io)?;
                out.write_all(after_text.as_deref().unwrap_or_default().as_bytes())
                    .map_err(io)?;
            }
            if let (Some(dir), Some(text)) = (&self.instr.dump_dir, &after_text) {
                write_file(dir, &format!("{index:02}-{name}.ir"), text)?;
            }
            observe(PassEvent::After {
                index,
                name,
                graph: g,
                record: &record,
            });
            report.records.push(record);
            if self.instr.stop_after.as_deref() == Some(name) {
                report.stopped_after = Some(name.into());
                break;
            }
        }
        report.total = start.elapsed();
        if self.instr.time_passes {
            out.write_all(report.timing_report().as_bytes())
                .map_err(io)?;
        }
        Ok(report)
    }
}

fn write_file(dir: &std::path::Path, file: &str, text: &str) -> Result<(), PipelineError> {
    let path = dir.join(file);
    reformc_ir::outfile::write_atomic(&path, |w| w.write_all(text.as_bytes()))
        .map_err(|e| PipelineError::Io(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Graph {
        reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[B,L,8]\n %1 = exp %0 : f32[B,L,8]\n output \"y\" = %1\n}").unwrap()
    }

    #[test]
    fn unknown_names_list_the_known_passes() {
        let instr = Instrumentation {
            disable: ["nope".to_string()].into(),
            ..Default::default()
        };
        let err = PassManager::new(Pipeline::default_pipeline(), instr)
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("unknown pass `nope` in --disable-pass"),
            "{msg}"
        );
        assert!(
            msg.contains("attention") && msg.contains("memory-plan"),
            "{msg}"
        );
        let instr = Instrumentation {
            stop_after: Some("memory-plan".into()),
            ..Default::default()
        };
        let err = PassManager::new(Pipeline::parse("attention").unwrap(), instr)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not in the pipeline"), "{err}");
        assert!(PassManager::new(
            Pipeline {
                passes: vec!["x".into()]
            },
            Instrumentation::default()
        )
        .is_err());
    }

    #[test]
    fn disable_stop_after_and_progress() {
        let mut g = graph();
        let instr = Instrumentation {
            disable: ["attention".to_string()].into(),
            stop_after: Some("attention".into()),
            ..Default::default()
        };
        let pm =
            PassManager::new(Pipeline::parse("attention,memory-plan").unwrap(), instr).unwrap();
        let mut out = Vec::new();
        let r = pm.run(&mut g, &PassOptions::default(), &mut out).unwrap();
        // A disabled pass is not run, so stop-after does not trigger on it.
        assert_eq!(r.records.len(), 2);
        assert!(r.records[0].skipped);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("[1/2] attention skipped (disabled)"),
            "{text}"
        );
        assert!(text.contains("[2/2] memory-plan "), "{text}");
        let pm = PassManager::new(
            Pipeline::parse("attention,memory-plan").unwrap(),
            Instrumentation {
                stop_after: Some("attention".into()),
                quiet: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut out = Vec::new();
        let r = pm.run(&mut g, &PassOptions::default(), &mut out).unwrap();
        assert_eq!(
            (r.records.len(), r.stopped_after.as_deref()),
            (1, Some("attention"))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn dump_dir_and_time_passes() {
        let dir = std::env::temp_dir().join(format!("reformc-pm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let instr = Instrumentation {
            dump_dir: Some(dir.clone()),
            time_passes: true,
            quiet: true,
            print_changed: true,
            ..Default::default()
        };
        let pm =
            PassManager::new(Pipeline::parse("attention,memory-plan").unwrap(), instr).unwrap();
        let mut out = Vec::new();
        let mut g = graph();
        pm.run(&mut g, &PassOptions::default(), &mut out).unwrap();
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["00-input.ir", "01-attention.ir", "02-memory-plan.ir"]
        );
        let text = std::fs::read_to_string(dir.join("02-memory-plan.ir")).unwrap();
        assert_eq!(reformc_ir::print(&reformc_ir::parse(&text).unwrap()), text);
        let out = String::from_utf8(out).unwrap();
        // Nothing changed, so --print-changed printed nothing; the timing report is there.
        assert!(!out.contains("IR Dump"), "{out}");
        assert!(
            out.contains("Pass execution timing report") && out.contains("memory-plan"),
            "{out}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    struct Breaker;
    impl Pass for Breaker {
        fn name(&self) -> &'static str {
            "breaker"
        }
        fn summary(&self) -> &'static str {
            "test"
        }
        fn run(&self, g: &mut Graph, _: &PassOptions) -> Result<Vec<String>, PassError> {
            g.outputs[0].1 = reformc_ir::ValueId(1000);
            Ok(vec![])
        }
    }

    #[test]
    fn verifier_failure_names_the_pass() {
        let pm = PassManager {
            pipeline: Pipeline {
                passes: vec!["breaker".into()],
            },
            passes: vec![Box::new(Breaker)],
            instr: Instrumentation::default(),
        };
        let err = pm
            .run(&mut graph(), &PassOptions::default(), &mut Vec::new())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("pass `breaker`: the IR does not verify after this pass"),
            "{err}"
        );
    }
}
