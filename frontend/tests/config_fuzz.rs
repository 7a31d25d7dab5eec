//! Property-based fuzzing of the config readers: arbitrary JSON never
//! panics, and every error is one line naming the file.

use proptest::prelude::*;
use reformc_frontend::config::parse_model_config;
use std::path::Path;

fn check(text: &str) {
    if let Err(e) = parse_model_config(text, Path::new("fuzz.json")) {
        let msg = e.to_string();
        assert!(msg.starts_with("fuzz.json: "), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        (-5i64..600).prop_map(serde_json::Value::from),
        (-1.0f64..1e4).prop_map(serde_json::Value::from),
        prop_oneof![
            Just("lsh"),
            Just("local"),
            Just("relu"),
            Just("gelu"),
            Just("reformer"),
            Just("x")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![proptest::collection::vec(inner, 0..4).prop_map(serde_json::Value::from)]
    })
}

const KEYS: &[&str] = &[
    "model_type",
    "hidden_size",
    "num_attention_heads",
    "attention_head_size",
    "attn_layers",
    "num_buckets",
    "num_hashes",
    "axial_pos_embds",
    "axial_pos_shape",
    "axial_pos_embds_dim",
    "lsh_attn_chunk_length",
    "local_attn_chunk_length",
    "max_position_embeddings",
    "vocab_size",
    "feed_forward_size",
    "hidden_act",
    "is_decoder",
    "layer_norm_eps",
    "lsh_num_chunks_before",
    "lsh_num_chunks_after",
    "local_num_chunks_before",
    "local_num_chunks_after",
    "pad_token_id",
    "num_hidden_layers",
    "format",
    "version",
    "layers",
    "architectures",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,120}") {
        check(&s);
    }

    #[test]
    fn arbitrary_hf_configs_never_panic(fields in proptest::collection::vec((0..KEYS.len(), json_value()), 0..12)) {
        let mut obj = serde_json::Map::new();
        obj.insert("model_type".into(), "reformer".into());
        for (k, v) in fields {
            obj.insert(KEYS[k].into(), v);
        }
        check(&serde_json::Value::Object(obj).to_string());
    }

    #[test]
    fn arbitrary_schema_files_never_panic(fields in proptest::collection::vec((0..KEYS.len(), json_value()), 0..12)) {
        let mut obj = serde_json::Map::new();
        obj.insert("format".into(), "reformc-model".into());
        obj.insert("version".into(), 1.into());
        for (k, v) in fields {
            obj.insert(KEYS[k].into(), v);
        }
        check(&serde_json::Value::Object(obj).to_string());
    }
}
