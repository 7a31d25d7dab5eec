//! Random small model configurations in reformc's model schema (reversible
//! and residual, local / LSH / full attention, axial and learned positions,
//! several activations), shared by the differential tests: interpreter vs
//! JIT (backends/llvm/tests/random_models.rs) and vs the compiled executable
//! (tests/random_models_exe.rs).

use ndarray::{ArrayD, IxDyn};
use reformc_frontend::lower::{expected_weights, LshSource};
use reformc_frontend::spec::ModelSpec;
use reformc_interp::Tensor;
use reformc_ir::Activation;
use std::collections::BTreeMap;

/// The linear congruential generator the random-model tests draw from (kept
/// as it was so that their cases stay the same).
pub struct Lcg(pub u64);

impl Lcg {
    /// The next 31 random bits.
    pub fn next_u31(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u31() % n
    }

    /// A value in `[-1, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u31() % (1 << 24)) as f32 / (1 << 24) as f32 * 2.0 - 1.0
    }

    /// One of `xs`.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// A random model configuration (JSON text in reformc's schema).
pub fn random_config(rng: &mut Lcg) -> String {
    let reversible = rng.below(2) == 0;
    let heads = 1 + rng.below(3);
    let head_dim = *rng.pick(&[4u64, 8, 16]);
    let hidden = *rng.pick(&[8u64, 16, 24]);
    let n_layers = 1 + rng.below(3);
    let lsh_chunk = *rng.pick(&[2u64, 4, 8]);
    let local_chunk = *rng.pick(&[2u64, 4, 8]);
    let kinds = [
        r#""local""#,
        r#""lsh""#,
        r#""full""#,
        r#"{"type": "full", "shared_qk": true}"#,
    ];
    let layers: Vec<&str> = (0..n_layers).map(|_| *rng.pick(&kinds)).collect();
    // Every activation the IR has; the identity is the schema's `linear`.
    let act = rng.pick(&Activation::ALL).name().unwrap_or("linear");
    let position = if rng.below(2) == 0 {
        let d0 = hidden / 2;
        format!(
            r#"{{"type": "axial", "shape": [8, 8], "dims": [{d0}, {}]}}"#,
            hidden - d0
        )
    } else {
        r#"{"type": "learned"}"#.to_string()
    };
    let buckets = *rng.pick(&["4", "8", "[2, 4]"]);
    format!(
        r#"{{
  "format": "reformc-model",
  "version": 1,
  "architecture": "{}",
  "vocab_size": {},
  "hidden_size": {hidden},
  "num_heads": {heads},
  "head_dim": {head_dim},
  "feed_forward_size": {},
  "activation": "{act}",
  "layer_norm_eps": 1e-5,
  "causal": {},
  "layers": [{}],
  "lsh": {{"chunk": {lsh_chunk}, "before": 1, "after": {}, "n_hashes": {}, "buckets": {buckets}}},
  "local": {{"chunk": {local_chunk}, "before": {}, "after": {}}},
  "position": {position},
  "max_position_embeddings": 64,
  "pad_token_id": 0,
  "head": {{"type": "lm_head", "bias": {}}},
  "weight_prefix": ""
}}"#,
        if reversible { "reversible" } else { "residual" },
        10 + rng.below(30),
        8 * (1 + rng.below(4)),
        rng.below(2) == 0,
        layers.join(", "),
        rng.below(2),
        1 + rng.below(3),
        1 + rng.below(2),
        rng.below(2),
        rng.below(2) == 0,
    )
}

/// Random weights for every tensor `g` expects (layer norms start at 1).
pub fn random_weights(g: &reformc_ir::Graph, rng: &mut Lcg) -> BTreeMap<String, Tensor> {
    expected_weights(g)
        .into_iter()
        .map(|(n, s)| {
            let shape: Vec<usize> = s.iter().map(|&d| d as usize).collect();
            let count = shape.iter().product();
            let scale = if n.contains("layer_norm.weight") {
                0.0
            } else {
                0.5
            };
            let v: Vec<f32> = (0..count)
                .map(|_| scale * rng.unit() + if scale == 0.0 { 1.0 } else { 0.0 })
                .collect();
            (
                n,
                Tensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap()),
            )
        })
        .collect()
}

/// Random ids (some rows padded at the end), a mask, a seed and, for the
/// bucket source, random recorded buckets of `factors`.
pub fn random_inputs(
    spec: &ModelSpec,
    b: usize,
    l: usize,
    rng: &mut Lcg,
    source: LshSource,
    factors: &[u64],
) -> BTreeMap<String, Tensor> {
    let ids: Vec<i64> = (0..b * l)
        .map(|_| rng.below(spec.vocab_size) as i64)
        .collect();
    // Padding at the end of some rows (never a whole row).
    let mask: Vec<i64> = (0..b * l)
        .map(|i| i64::from(!(i / l == 1 && i % l >= l / 2 && l > 1)))
        .collect();
    let mut m = BTreeMap::new();
    m.insert(
        "input_ids".into(),
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[b, l]), ids).unwrap()),
    );
    m.insert(
        "attention_mask".into(),
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[b, l]), mask).unwrap()),
    );
    m.insert(
        "seed".into(),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[]), rng.below(1000) as i64)),
    );
    if source == LshSource::Buckets {
        let p = spec.padded_len(l as u64) as usize;
        let n = spec.num_lsh_layers();
        let (h, r) = (spec.num_heads as usize, spec.lsh.n_hashes as usize);
        let nb: u64 = factors.iter().product();
        let v: Vec<i64> = (0..n * b * h * r * p)
            .map(|i| {
                let round = (i / p) % r;
                (rng.below(nb) + round as u64 * nb) as i64
            })
            .collect();
        m.insert(
            "lsh_buckets".into(),
            Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[n, b, h, r, p]), v).unwrap()),
        );
    }
    m
}

/// Writes f32 weights as a safetensors file (names sorted, data in that
/// order), for tests that compile and run executables.
///
/// ```
/// use reformc_testkit::random_model::write_safetensors;
/// use reformc_interp::Tensor;
/// let dir = std::env::temp_dir().join(format!("reformc-doc-st-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let w = [("a".to_string(), Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 3]))))].into();
/// write_safetensors(&dir.join("w.safetensors"), &w);
/// let bytes = std::fs::read(dir.join("w.safetensors")).unwrap();
/// assert_eq!(bytes.len() as u64, 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) + 24);
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn write_safetensors(path: &std::path::Path, w: &BTreeMap<String, Tensor>) {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for (name, t) in w {
        let Tensor::F32(a) = t else {
            panic!("{name}: weights are f32")
        };
        let begin = data.len();
        data.extend(a.iter().flat_map(|x| x.to_le_bytes()));
        let shape: Vec<String> = a.shape().iter().map(|d| d.to_string()).collect();
        entries.push(format!(
            "{name:?}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{begin},{}]}}",
            shape.join(","),
            data.len()
        ));
    }
    let header = format!("{{{}}}", entries.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_draw_every_activation_and_parse() {
        let mut rng = Lcg(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let text = random_config(&mut rng);
            let path = std::path::Path::new("random.json");
            let (spec, _) = reformc_frontend::schema::parse_schema(&text, path)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            seen.insert(spec.activation.name().unwrap_or("linear").to_string());
        }
        let all: std::collections::BTreeSet<String> = Activation::ALL
            .iter()
            .map(|a| a.name().unwrap_or("linear").to_string())
            .collect();
        assert_eq!(seen, all);
    }
}
