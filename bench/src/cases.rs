//! The training cases of `../shared/bench/torch_ref.py` (copied as `bench/torch_ref.py`),
//! written as `.kd` pipelines, and the random data each one reads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{write_file, Result};

/// Steps in each epoch of a bench run. The first epoch is the warm-up: its steps are left
/// out of the figures (and a cached teacher fills its cache there).
pub const STEPS_PER_EPOCH: usize = 4;

/// A training case, as torch_ref.py defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    MlpDistill,
    CnnDistill,
    TextStudent,
    BnCnn,
    ResnetBn,
    BilstmStudent,
    TransformerStudent,
    BertTeacher,
    /// The prediction path of `evaluate` on a test split, and single-sample latency.
    Evaluate,
}

impl Case {
    pub const ALL: [Case; 9] = [
        Case::MlpDistill,
        Case::CnnDistill,
        Case::TextStudent,
        Case::BnCnn,
        Case::ResnetBn,
        Case::BilstmStudent,
        Case::TransformerStudent,
        Case::BertTeacher,
        Case::Evaluate,
    ];

    /// The name torch_ref.py's `--case` takes.
    pub fn name(self) -> &'static str {
        match self {
            Case::MlpDistill => "mlp_distill",
            Case::CnnDistill => "cnn_distill",
            Case::TextStudent => "text_student",
            Case::BnCnn => "bn_cnn",
            Case::ResnetBn => "resnet_bn",
            Case::BilstmStudent => "bilstm_student",
            Case::TransformerStudent => "transformer_student",
            Case::BertTeacher => "bert_teacher",
            Case::Evaluate => "evaluate",
        }
    }

    pub fn from_name(name: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn batch(self) -> usize {
        match self {
            Case::MlpDistill | Case::CnnDistill | Case::BnCnn | Case::ResnetBn => 128,
            Case::TextStudent => 64,
            Case::BilstmStudent | Case::TransformerStudent | Case::BertTeacher => 32,
            // `evaluate`'s batch (kd_runtime::output::evaluate::EVAL_BATCH).
            Case::Evaluate => 512,
        }
    }

    /// The pipeline's one stage, whose epochs the bench sets.
    pub fn stage(self) -> &'static str {
        match self {
            Case::MlpDistill
            | Case::CnnDistill
            | Case::TextStudent
            | Case::BilstmStudent
            | Case::TransformerStudent
            | Case::BertTeacher => "distill",
            Case::BnCnn | Case::ResnetBn | Case::Evaluate => "fit",
        }
    }

    /// The pipeline; its one stage is named [`Case::stage`].
    pub fn source(self) -> &'static str {
        match self {
            Case::MlpDistill => include_str!("../cases/mlp_distill.kd"),
            Case::CnnDistill => include_str!("../cases/cnn_distill.kd"),
            Case::TextStudent => include_str!("../cases/text_student.kd"),
            Case::BnCnn => include_str!("../cases/bn_cnn.kd"),
            Case::ResnetBn => include_str!("../cases/resnet_bn.kd"),
            Case::BilstmStudent => include_str!("../cases/bilstm_student.kd"),
            Case::TransformerStudent => include_str!("../cases/transformer_student.kd"),
            Case::BertTeacher => include_str!("../cases/bert_teacher.kd"),
            Case::Evaluate => include_str!("../cases/evaluate.kd"),
        }
    }

    /// Writes the data the pipeline reads into `dir/data`: `steps` batches of random
    /// samples, one epoch.
    pub fn write_data(self, dir: &Path, steps: usize) -> Result<()> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| crate::error::io(&data, e))?;
        let samples = self.batch() * steps;
        let mut random = SplitMix(0x6b64_6362_656e_6368);
        match self {
            Case::MlpDistill | Case::CnnDistill | Case::BnCnn | Case::ResnetBn | Case::Evaluate => {
                // resnet_bn's samples are 3 x 32 x 32 values, stored as 32 x 96 images.
                let (height, width) = match self {
                    Case::ResnetBn => (32, 96),
                    _ => (28, 28),
                };
                let mut images = idx_header(0x0803, &[samples, height, width]);
                images.extend((0..samples * height * width).map(|_| random.below(256) as u8));
                write_file(&data.join("train-images-idx3-ubyte"), &images)?;
                let mut labels = idx_header(0x0801, &[samples]);
                labels.extend((0..samples).map(|_| random.below(10) as u8));
                write_file(&data.join("train-labels-idx1-ubyte"), &labels)
            }
            Case::BertTeacher => {
                link_minilm(&data, self)?;
                let mut lines = String::new();
                for _ in 0..samples {
                    // Ordinary English words, more than 128 WordPiece tokens: every row is
                    // cut to max_len.
                    let words: Vec<&str> = (0..160)
                        .map(|_| ENGLISH[random.below(ENGLISH.len())])
                        .collect();
                    labelled_line(&mut lines, &words.join(" "), &mut random);
                }
                write_file(&data.join("texts.jsonl"), lines.as_bytes())
            }
            Case::TextStudent | Case::BilstmStudent | Case::TransformerStudent => {
                write_file(
                    &data.join("tokenizer.json"),
                    word_tokenizer(VOCAB).as_bytes(),
                )?;
                let mut lines = String::new();
                for _ in 0..samples {
                    // text_student's texts fill its 128 tokens; the sequence students'
                    // vary from 4 to 48 words, so padding is masked.
                    let words = match self {
                        Case::TextStudent => 128,
                        _ => 4 + random.below(45),
                    };
                    let words: Vec<String> = (0..words)
                        .map(|_| format!("w{}", FIRST_WORD + random.below(VOCAB - FIRST_WORD)))
                        .collect();
                    labelled_line(&mut lines, &words.join(" "), &mut random);
                }
                write_file(&data.join("texts.jsonl"), lines.as_bytes())
            }
        }
    }
}

/// What the bench installs into PyTorch's venv for bert_teacher's twin (the version it
/// was measured with).
pub const TRANSFORMERS: &str = "transformers==5.24.0";

/// Words for the BERT teacher's texts.
const ENGLISH: [&str; 24] = [
    "the", "model", "teacher", "student", "learns", "from", "soft", "targets", "and", "a", "small",
    "network", "keeps", "most", "of", "its", "accuracy", "while", "running", "faster", "on",
    "every", "machine", "today",
];

/// Where the MiniLM checkpoint is: `data/minilm` under the current folder (the repository's
/// root, where `scripts/fetch-data.sh minilm` puts it), else next to this crate's source.
pub fn minilm_folder() -> Option<PathBuf> {
    let here = std::env::current_dir().ok()?.join("data/minilm");
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/minilm");
    [here, beside]
        .into_iter()
        .find(|folder| folder.join("model.safetensors").is_file())
}

/// Links the MiniLM checkpoint into the case's data folder as `minilm`.
fn link_minilm(data: &Path, case: Case) -> Result<()> {
    let Some(folder) = minilm_folder() else {
        return Err(crate::error::BenchError::MissingCheckpoint {
            case: case.name().to_string(),
            looked: std::env::current_dir()
                .unwrap_or_default()
                .join("data/minilm"),
        });
    };
    let folder = folder
        .canonicalize()
        .map_err(|e| crate::error::io(&folder, e))?;
    let link = data.join("minilm");
    std::os::unix::fs::symlink(&folder, &link).map_err(|e| crate::error::io(&link, e))
}

/// One JSONL line of `text` with a random label, `a` or `b`.
fn labelled_line(lines: &mut String, text: &str, random: &mut SplitMix) {
    let label = if random.below(2) == 0 { "a" } else { "b" };
    let _ = writeln!(
        lines,
        "{}",
        serde_json::json!({"text": text, "label": label})
    );
}

/// torch_ref.py's vocabulary: token ids in [0, 30522).
const VOCAB: usize = 30522;
/// Ids 0 and 1 are `[PAD]` and `[UNK]`; words are `w2` ... `w30521`.
const FIRST_WORD: usize = 2;

/// A Hugging Face tokenizer.json of the word-level kind: whitespace split, one id per word.
fn word_tokenizer(vocab: usize) -> String {
    let mut words = serde_json::Map::new();
    words.insert("[PAD]".into(), 0.into());
    words.insert("[UNK]".into(), 1.into());
    for id in FIRST_WORD..vocab {
        words.insert(format!("w{id}"), id.into());
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]")],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "[UNK]"}
    })
    .to_string()
}

fn idx_header(magic: u32, dims: &[usize]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    for &d in dims {
        bytes.extend((d as u32).to_be_bytes());
    }
    bytes
}

/// A small fixed-seed generator: the bench's data only has to be the same every run.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % n as u64) as usize
    }
}
