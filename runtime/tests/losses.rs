//! Loss values against PyTorch (float64), copied from shared/reference/losses.json
//! (made by make_losses.py), and autograd gradients against finite differences.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use candle_core::{DType, Device, Tensor, Var};
use kd_runtime::train::losses::{self, Dist, Labels, Mix};

const S: [[f64; 5]; 4] = [
    [
        1.7757973542428307,
        -5.674564895985967,
        -3.1117235371906324,
        0.5588927246325963,
        -0.7838304244609705,
    ],
    [
        -2.42438255391297,
        -1.206324766332453,
        0.2718225468307366,
        3.388479556782324,
        -0.02773111519465362,
    ],
    [
        -2.436194979067447,
        2.5776233315567705,
        -0.3239792334675744,
        -1.9308506858732777,
        0.42831341725301614,
    ],
    [
        -1.5889564713554198,
        1.706562939857114,
        -0.5109901408710306,
        -3.0148770907850477,
        0.16390880497812604,
    ],
];
const T: [[f64; 5]; 4] = [
    [
        -2.6092866590228567,
        0.9218120728141872,
        -1.0801078828799595,
        -0.385782735702496,
        -0.901654475362145,
    ],
    [
        -0.1307943064318305,
        -1.374932796353565,
        0.1521838898199045,
        -3.6871086978448813,
        3.5011672019960893,
    ],
    [
        1.12557762515241,
        -0.23424238167675324,
        0.8841833220406429,
        2.682824330853203,
        -3.5849830663440536,
    ],
    [
        1.282942097332219,
        0.32484289259111915,
        3.0161373406980942,
        0.6467887156095478,
        -1.6935177239513297,
    ],
];
const Y: [u32; 4] = [0, 3, 1, 4];
const HS: [[f64; 6]; 4] = [
    [
        0.8093987359643233,
        -1.6566781595525892,
        -1.2631065394809007,
        -2.46103201422146,
        0.4172482593140265,
        -0.37938175220873754,
    ],
    [
        0.28413655389400366,
        0.20986029278177318,
        -0.09269169468669078,
        -1.0522649838509563,
        -1.201827556166048,
        0.6703047626712846,
    ],
    [
        -1.0910737001749202,
        -0.13616658136353868,
        0.5064840759895209,
        1.3291421316919345,
        0.9311160263650025,
        0.42110678863376944,
    ],
    [
        0.04902525353613087,
        -0.9245352031331532,
        1.6291649087235378,
        -1.5021728664993936,
        1.6167819157602337,
        -0.9172055627324974,
    ],
];
const HT: [[f64; 6]; 4] = [
    [
        0.003621376866477042,
        -0.6336760480671251,
        -0.2582234810233192,
        1.0739841668658265,
        0.20942430170880147,
        -2.226732884585138,
    ],
    [
        -1.493955918139449,
        -1.728730438994634,
        -1.779776024877192,
        1.273594573731203,
        0.5134238880533493,
        -0.12235673046824881,
    ],
    [
        0.525966637763825,
        0.6172906009479897,
        -1.1463601911932972,
        -0.11437609962205945,
        0.35214814275961104,
        0.4345356362212183,
    ],
    [
        -0.3182504742983937,
        1.1212862788739906,
        -0.8972818328695323,
        0.6570102618528546,
        -0.3065514816235886,
        -1.1156981461057305,
    ],
];

/// (T, alpha, kl_T, soft_ce_T, ce_hard, hinton)
const CASES: [(f64, f64, f64, f64, f64, f64); 8] = [
    (
        1.0,
        0.5,
        3.3420709407014044,
        4.138695212202089,
        0.6098385204177533,
        1.9759547305595788,
    ),
    (
        1.0,
        0.9,
        3.3420709407014044,
        4.138695212202089,
        0.6098385204177533,
        3.0688476986730393,
    ),
    (
        2.0,
        0.5,
        1.1051816231888705,
        2.392571069172055,
        0.6098385204177533,
        2.5152825065866176,
    ),
    (
        2.0,
        0.9,
        1.1051816231888705,
        2.392571069172055,
        0.6098385204177533,
        4.0396376955217095,
    ),
    (
        4.0,
        0.5,
        0.31492624756454257,
        1.8288031914348022,
        0.6098385204177533,
        2.824329240725217,
    ),
    (
        4.0,
        0.9,
        0.31492624756454257,
        1.8288031914348022,
        0.6098385204177533,
        4.595921816971188,
    ),
    (
        20.0,
        0.5,
        0.013642128563014506,
        1.6189230014616565,
        0.6098385204177533,
        3.033344972811778,
    ),
    (
        20.0,
        0.9,
        0.013642128563014506,
        1.6189230014616565,
        0.6098385204177533,
        4.972150134726998,
    ),
];
const MSE_LOGITS: f64 = 11.724784706027794;
const MSE_PROBS: f64 = 0.2325913895787818;
const COSINE: f64 = 1.3202962903315165;
const SEED_CE: f64 = 0.5448054311250702;
const SEED_MSE_MEAN_OVER_CLASSES: f64 = 0.009999999999999998;
const SEED_KL: f64 = 0.0444030075868823;

const TOLERANCE: f64 = 1e-9;

fn tensor<const C: usize>(rows: &[[f64; C]]) -> Tensor {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), C), &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn assert_close(what: &str, got: f64, expected: f64) {
    assert!(
        (got - expected).abs() <= TOLERANCE * expected.abs().max(1.0),
        "{what}: got {got}, expected {expected} (diff {})",
        got - expected
    );
}

/// Hinton's loss as a pipeline writes it.
fn hinton(s: &Tensor, t: &Tensor, temperature: f64, alpha: f64) -> Tensor {
    let kl = losses::kl(
        &Dist::from_logits(t, temperature).unwrap(),
        &Dist::from_logits(s, temperature).unwrap(),
    )
    .unwrap();
    let ce = losses::cross_entropy(s, &Labels::hard(Y.to_vec())).unwrap();
    (kl.affine(alpha * temperature * temperature, 0.0).unwrap()
        + ce.affine(1.0 - alpha, 0.0).unwrap())
    .unwrap()
}

#[test]
fn every_case_matches_pytorch() {
    let s = tensor(&S);
    let t = tensor(&T);
    for &(temperature, alpha, kl_t, soft_ce_t, ce_hard, hinton_value) in &CASES {
        let p_teacher = Dist::from_logits(&t, temperature).unwrap();
        let q_student = Dist::from_logits(&s, temperature).unwrap();
        let label = format!("T={temperature} alpha={alpha}");
        assert_close(
            &format!("kl {label}"),
            scalar(&losses::kl(&p_teacher, &q_student).unwrap()),
            kl_t,
        );
        assert_close(
            &format!("soft_ce {label}"),
            scalar(&losses::soft_cross_entropy(&q_student, &p_teacher.probs).unwrap()),
            soft_ce_t,
        );
        assert_close(
            &format!("ce {label}"),
            scalar(&losses::cross_entropy(&s, &Labels::hard(Y.to_vec())).unwrap()),
            ce_hard,
        );
        assert_close(
            &format!("hinton {label}"),
            scalar(&hinton(&s, &t, temperature, alpha)),
            hinton_value,
        );
        // KL of a softmax computed from the probabilities alone agrees too.
        let from_probs = losses::kl(
            &Dist::from_probs(&losses::softmax(&t, temperature).unwrap()).unwrap(),
            &Dist::from_probs(&losses::softmax(&s, temperature).unwrap()).unwrap(),
        )
        .unwrap();
        assert!((scalar(&from_probs) - kl_t).abs() < 1e-9);
    }
}

#[test]
fn mse_and_cosine_match_pytorch() {
    let s = tensor(&S);
    let t = tensor(&T);
    assert_close(
        "mse_logits",
        scalar(&losses::mse(&s, &t).unwrap()),
        MSE_LOGITS,
    );
    let ps = losses::softmax(&s, 1.0).unwrap();
    let pt = losses::softmax(&t, 1.0).unwrap();
    assert_close(
        "mse_probs",
        scalar(&losses::mse(&ps, &pt).unwrap()),
        MSE_PROBS,
    );
    assert_close(
        "cosine",
        scalar(&losses::cosine(&tensor(&HS), &tensor(&HT)).unwrap()),
        COSINE,
    );
}

#[test]
fn the_seed_articles_worked_example() {
    let teacher = tensor(&[[0.8, 0.2]]);
    let student = tensor(&[[0.9, 0.1]]);
    let student_dist = Dist::from_probs(&student).unwrap();
    assert_close(
        "seed_ce",
        scalar(&losses::soft_cross_entropy(&student_dist, &teacher).unwrap()),
        SEED_CE,
    );
    assert_close(
        "seed_mse",
        scalar(&losses::mse(&student, &teacher).unwrap()),
        SEED_MSE_MEAN_OVER_CLASSES,
    );
    assert_close(
        "seed_kl",
        scalar(&losses::kl(&Dist::from_probs(&teacher).unwrap(), &student_dist).unwrap()),
        SEED_KL,
    );
}

#[test]
fn zero_probabilities_contribute_nothing_to_kl() {
    let p = tensor(&[[1.0, 0.0]]);
    let q = tensor(&[[0.5, 0.5]]);
    let kl = scalar(
        &losses::kl(
            &Dist::from_probs(&p).unwrap(),
            &Dist::from_probs(&q).unwrap(),
        )
        .unwrap(),
    );
    assert!((kl - 2f64.ln()).abs() < 1e-12, "{kl}");
}

#[test]
fn mixup_cross_entropy_is_the_blend() {
    let s = tensor(&S);
    let partner = vec![1, 1, 2, 0];
    let lambda = 0.3;
    let mixed = Labels {
        classes: Y.to_vec(),
        mix: Some(Mix {
            partner: partner.clone(),
            lambda,
        }),
    };
    let blended = scalar(&losses::cross_entropy(&s, &mixed).unwrap());
    let ce_y = scalar(&losses::cross_entropy(&s, &Labels::hard(Y.to_vec())).unwrap());
    let ce_partner = scalar(&losses::cross_entropy(&s, &Labels::hard(partner)).unwrap());
    assert!((blended - (lambda * ce_y + (1.0 - lambda) * ce_partner)).abs() < 1e-12);
}

#[test]
fn out_of_range_labels_are_an_error_not_a_panic() {
    let s = tensor(&S);
    assert!(losses::cross_entropy(&s, &Labels::hard(vec![0, 1, 2, 9])).is_err());
}

/// Largest relative difference between candle's gradient of `f` at `x` and central
/// finite differences.
fn gradient_error(x: &[f64], shape: (usize, usize), f: &dyn Fn(&Tensor) -> Tensor) -> f64 {
    let var = Var::from_vec(x.to_vec(), shape, &Device::Cpu).unwrap();
    let loss = f(var.as_tensor());
    let grads = loss.backward().unwrap();
    let autograd: Vec<f64> = grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let h = 1e-6;
    let mut numeric = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        let mut plus = x.to_vec();
        let mut minus = x.to_vec();
        plus[i] += h;
        minus[i] -= h;
        let fp = scalar(&f(&Tensor::from_vec(plus, shape, &Device::Cpu).unwrap()));
        let fm = scalar(&f(&Tensor::from_vec(minus, shape, &Device::Cpu).unwrap()));
        numeric.push((fp - fm) / (2.0 * h));
    }
    let diff: f64 = autograd
        .iter()
        .zip(&numeric)
        .map(|(a, n)| (a - n) * (a - n))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = numeric.iter().map(|n| n * n).sum::<f64>().sqrt().max(1e-12);
    diff / norm
}

/// A loss as a function of one input.
type LossOf<'a> = dyn Fn(&Tensor) -> Tensor + 'a;

#[test]
fn gradients_match_finite_differences() {
    let s: Vec<f64> = S.iter().flatten().copied().collect();
    let hs: Vec<f64> = HS.iter().flatten().copied().collect();
    let t = tensor(&T);
    let ht = tensor(&HT);
    let shape = (4, 5);
    let checks: Vec<(&str, Box<LossOf<'_>>)> = vec![
        (
            "kl_T4 (student)",
            Box::new(|x: &Tensor| {
                losses::kl(
                    &Dist::from_logits(&t, 4.0).unwrap(),
                    &Dist::from_logits(x, 4.0).unwrap(),
                )
                .unwrap()
            }),
        ),
        (
            "kl_T2 (teacher side)",
            Box::new(|x: &Tensor| {
                losses::kl(
                    &Dist::from_logits(x, 2.0).unwrap(),
                    &Dist::from_logits(&t, 2.0).unwrap(),
                )
                .unwrap()
            }),
        ),
        (
            "soft_ce_T2",
            Box::new(|x: &Tensor| {
                let p = losses::softmax(&t, 2.0).unwrap();
                losses::soft_cross_entropy(&Dist::from_logits(x, 2.0).unwrap(), &p).unwrap()
            }),
        ),
        (
            "ce",
            Box::new(|x: &Tensor| losses::cross_entropy(x, &Labels::hard(Y.to_vec())).unwrap()),
        ),
        (
            "hinton T4 a0.9",
            Box::new(|x: &Tensor| hinton(x, &t, 4.0, 0.9)),
        ),
        ("mse", Box::new(|x: &Tensor| losses::mse(x, &t).unwrap())),
        (
            "mse of probabilities",
            Box::new(|x: &Tensor| {
                losses::mse(
                    &losses::softmax(x, 1.0).unwrap(),
                    &losses::softmax(&t, 1.0).unwrap(),
                )
                .unwrap()
            }),
        ),
        (
            "kl of probabilities",
            Box::new(|x: &Tensor| {
                let q = Dist::from_probs(&losses::softmax(x, 3.0).unwrap()).unwrap();
                losses::kl(&Dist::from_logits(&t, 3.0).unwrap(), &q).unwrap()
            }),
        ),
    ];
    for (name, f) in &checks {
        let error = gradient_error(&s, shape, f.as_ref());
        assert!(error < 1e-6, "{name}: relative gradient error {error}");
    }
    let error = gradient_error(&hs, (4, 6), &|x: &Tensor| losses::cosine(x, &ht).unwrap());
    assert!(error < 1e-6, "cosine: relative gradient error {error}");
}
