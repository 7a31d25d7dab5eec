//! IR -> e-graph -> IR on every fixture: lossless when no rule fires, and
//! `simplify` keeps the interpreter's outputs.

use crate::common;

use common::{assert_close, Case};
use reformc_frontend::lower::LshSource;
use reformc_ir::{print, DType};
use reformc_passes::eqsat::round_trip;
use reformc_passes::simplify::SimplifyPass;

#[test]
fn round_trip_is_lossless_on_every_fixture() {
    for case in Case::all() {
        for source in [LshSource::Seeded, LshSource::Rotations, LshSource::Buckets] {
            for dtype in [DType::F32, DType::F64] {
                let g = case.graph(dtype, source);
                let back = round_trip(&g).unwrap_or_else(|e| panic!("{}: {e}", case.name));
                assert_eq!(print(&back), print(&g), "{} {source:?} {dtype}", case.name);
            }
        }
    }
}

#[test]
fn simplify_keeps_outputs_on_every_fixture() {
    for case in Case::all() {
        let source = case.replay_source();
        let g = case.graph(DType::F32, source);
        let mut s = g.clone();
        let report = SimplifyPass::new().run_report(&mut s).unwrap();
        assert_eq!(
            report.stop_reason(),
            reformc_passes::eqsat::StopReason::Saturated,
            "{}",
            case.name
        );
        // The lowered graphs are already simple: nothing to rewrite.
        assert_eq!(print(&s), print(&g), "{}", case.name);
        assert_close(
            &case.run(&g, source),
            &case.run(&s, source),
            0.0,
            &case.name,
        );
    }
}
