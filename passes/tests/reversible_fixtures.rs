//! `reversible` on every HF fixture: unfold/fold round trips textually and
//! numerically, and every block's inverse recovers its input.

use crate::common;

use common::{assert_close, rel_diff, Case};
use reformc_ir::{print, DType, OpKind};
use reformc_passes::reversible::{
    fold_reversible, invert_reversible, unfold_reversible, ReversiblePass,
};
use reformc_passes::{Pass, PassOptions};

#[test]
fn fold_of_unfold_is_the_identity_on_every_fixture() {
    for case in Case::all() {
        let source = case.replay_source();
        let g = case.graph(DType::F32, source);
        let blocks = g.find(OpKind::ReversibleBlock).count();
        assert_eq!(blocks, case.spec.layers.len(), "{}", case.name);
        let mut u = g.clone();
        assert_eq!(unfold_reversible(&mut u).unwrap(), blocks, "{}", case.name);
        reformc_ir::verify(&u).unwrap();
        assert_eq!(u.find(OpKind::ReversibleBlock).count(), 0);
        // Unfolded and folded graphs compute the same values, bit for bit.
        assert_close(
            &case.run(&g, source),
            &case.run(&u, source),
            0.0,
            &case.name,
        );
        let mut f = u.clone();
        assert_eq!(fold_reversible(&mut f).unwrap(), blocks, "{}", case.name);
        assert_eq!(print(&f), print(&g), "{}", case.name);
        // The pass does the same.
        let mut p = u.clone();
        let notes = ReversiblePass.run(&mut p, &PassOptions::default()).unwrap();
        assert!(
            notes[0].starts_with(&format!("folded {blocks} ")),
            "{notes:?}"
        );
        assert_eq!(print(&p), print(&g));
    }
}

#[test]
fn inverse_recovers_every_block_input() {
    for case in Case::all() {
        let source = case.replay_source();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let mut g = case.graph(dtype, source);
            let blocks: Vec<_> = g.find(OpKind::ReversibleBlock).collect();
            for (i, b) in blocks.iter().enumerate() {
                let x = g.node(*b).inputs[0];
                let rec = invert_reversible(&mut g, *b).unwrap();
                g.set_output(&format!("x{i}"), x);
                g.set_output(&format!("rec{i}"), rec);
            }
            reformc_ir::verify(&g).unwrap();
            let out = case.run(&g, source);
            for i in 0..blocks.len() {
                let d = rel_diff(&out[&format!("x{i}")], &out[&format!("rec{i}")]);
                assert!(
                    d <= tol,
                    "{} {dtype} block {i}: forward then inverse is off by {d:e}",
                    case.name
                );
            }
        }
    }
}

/// `simplify` before `reversible` (the default pipeline order) on the
/// primitive form: the streams fold back into blocks, and a second
/// `simplify` removes the glue between them.
#[test]
fn streams_fold_after_simplify_on_every_fixture() {
    for case in Case::all() {
        let source = case.replay_source();
        let g = case.graph(DType::F32, source);
        let layers = case.spec.layers.len();
        let mut u = g.clone();
        unfold_reversible(&mut u).unwrap();
        let simplify = reformc_passes::simplify::SimplifyPass::new();
        simplify.run(&mut u, &PassOptions::default()).unwrap();
        assert_eq!(
            u.find(OpKind::Concat).count(),
            1,
            "{}: only the final concat remains",
            case.name
        );
        assert_eq!(fold_reversible(&mut u).unwrap(), layers, "{}", case.name);
        simplify.run(&mut u, &PassOptions::default()).unwrap();
        assert_eq!(u.find(OpKind::ReversibleBlock).count(), layers);
        assert!(
            u.find(OpKind::Add).count() <= 1,
            "{}:\n{}",
            case.name,
            print(&u)
        );
        assert_close(
            &case.run(&g, source),
            &case.run(&u, source),
            1e-6,
            &case.name,
        );
        // The same ops as lowered; only the duplication's concat sits later
        // (just before the first block).
        let kinds = |g: &reformc_ir::Graph| {
            let mut k: Vec<String> = g.walk().iter().map(|v| g.node(*v).op.to_string()).collect();
            k.sort();
            k
        };
        assert_eq!(kinds(&u), kinds(&g), "{}", case.name);
    }
}
