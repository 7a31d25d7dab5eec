//! Prints the MLIR module of an IR text file: `cargo run -p reformc-backend-mlir
//! --example emit_mlir -- graph.ir > model.mlir` (then `mlir-opt-22 model.mlir`).

use reformc_backend_mlir::{emit_module, verify_module, EmitOptions};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: emit_mlir GRAPH.ir");
        std::process::exit(2);
    };
    let result = std::fs::read_to_string(&path)
        .map_err(|e| format!("{path}: {e}"))
        .and_then(|t| reformc_ir::parse(&t).map_err(|e| format!("{path}: {e}")))
        .and_then(|g| emit_module(&g, &EmitOptions::default()).map_err(|e| e.to_string()))
        .and_then(|m| verify_module(&m).map(|()| m).map_err(|e| e.to_string()));
    match result {
        Ok(m) => print!("{m}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
