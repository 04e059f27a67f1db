//! Every fused op against the same function in plain candle ops: equal outputs and equal
//! gradients for each input (candle's autograd is the reference).

use super::*;
use candle_core::{Device, Var};

fn values(n: usize, salt: usize) -> Vec<f32> {
    (0..n).map(|i| (((i * 37 + salt * 11) % 101) as f32 / 50.0 - 1.0) * 1.3).collect()
}

fn diff(p: &Tensor, q: &Tensor) -> f32 {
    (p - q).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// Runs `op` and `reference` on the same inputs (Vars of `shapes`) and compares outputs and
/// the gradients of a fixed random projection of them.
fn same_grads(shapes: &[&[usize]], op: impl Fn(&[Tensor]) -> Result<Tensor>, reference: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let dev = Device::Cpu;
    let vars: Vec<Var> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Var::from_vec(values(s.iter().product(), i), *s, &dev).unwrap())
        .collect();
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (op(&xs).unwrap(), reference(&xs).unwrap());
    assert_eq!(a.dims(), b.dims());
    assert!(diff(&a, &b) < 1e-5, "forward differs by {}", diff(&a, &b));
    let proj = Tensor::new(values(a.elem_count(), 7).as_slice(), &dev).unwrap();
    let loss = |y: Tensor| (y.flatten_all().unwrap() * &proj).unwrap().sum_all().unwrap();
    let (ga, gb) = (loss(a).backward().unwrap(), loss(b).backward().unwrap());
    for (i, v) in vars.iter().enumerate() {
        let (p, q) = (ga.get(v.as_tensor()).expect("op gradient"), gb.get(v.as_tensor()).expect("reference gradient"));
        assert!(diff(p, q) < 1e-4, "input {i}: gradient differs by {}", diff(p, q));
    }
}

#[test]
fn linear_with_and_without_lora() {
    let dev = Device::Cpu;
    let w = Tensor::new(values(15, 3).as_slice(), &dev).unwrap().reshape((5, 3)).unwrap();
    let bias = Tensor::new(values(5, 4).as_slice(), &dev).unwrap();
    same_grads(&[&[4, 3]], |x| linear(&x[0], &w, Some(&bias), None), |x| x[0].matmul(&w.t()?)?.broadcast_add(&bias));
    same_grads(
        &[&[4, 3], &[2, 3], &[5, 2]],
        |x| linear(&x[0], &w, None, Some(LoraWeights { a: &x[1], b: &x[2], scale: 1.5 })),
        |x| x[0].matmul(&w.t()?)? + (x[0].matmul(&x[1].t()?)?.matmul(&x[2].t()?)? * 1.5)?,
    );
}

#[test]
fn norms_rope_and_activations() {
    let dev = Device::Cpu;
    let nw = Tensor::new(values(6, 5).as_slice(), &dev).unwrap();
    same_grads(&[&[5, 6]], |x| rms_norm(&x[0], &nw, 1e-5), |x| candle_nn::ops::rms_norm_slow(&x[0], &nw, 1e-5));
    // Per head: [N, 2·6] normalised in groups of 6.
    let per_head = |x: &[Tensor]| candle_nn::ops::rms_norm_slow(&x[0].reshape((3, 2, 6))?, &nw, 1e-5)?.reshape((3, 12));
    same_grads(&[&[3, 12]], |x| rms_norm(&x[0], &nw, 1e-5), per_head);

    let (b, t, h, d) = (2, 3, 2, 4);
    let ang: Vec<f32> = (0..t * d / 2).map(|i| i as f32 * 0.3).collect();
    let ang = Tensor::new(ang.as_slice(), &dev).unwrap().reshape((t, d / 2)).unwrap();
    let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
    let neg_sin = sin.neg().unwrap();
    same_grads(
        &[&[b * t, h * d]],
        |x| rope(&x[0], (b, t, h, d), &cos, &sin, &neg_sin),
        |x| candle_nn::rotary_emb::rope_slow(&x[0].reshape((b, t, h, d))?.transpose(1, 2)?, &cos, &sin)?.transpose(1, 2),
    );
    same_grads(&[&[4, 5], &[4, 5]], |x| silu_mul(&x[0], &x[1]), |x| x[0].silu()? * &x[1]);
    let targets = Tensor::new(&[2u32, 0, 4], &dev).unwrap();
    same_grads(&[&[3, 5]], |z| cross_entropy(&z[0], &targets), |z| {
        let lsm = candle_nn::ops::log_softmax(&z[0], D::Minus1)?;
        lsm.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
    });
}

#[test]
fn grouped_query_attention() {
    let dev = Device::Cpu;
    let (b, t, h, kv, d) = (2, 4, 4, 2, 3);
    // Causal, and the second sequence's last key is padding.
    let mut m = vec![0f32; b * t * t];
    for bi in 0..b {
        for i in 0..t {
            for j in 0..t {
                if j > i || (bi == 1 && j == t - 1) {
                    m[(bi * t + i) * t + j] = -1e9;
                }
            }
        }
    }
    let mask = Tensor::from_vec(m, (b, 1, t, t), &dev).unwrap();
    let reference = |x: &[Tensor]| -> Result<Tensor> {
        let (q, k, v) = (x[0].transpose(1, 2)?.contiguous()?, x[1].transpose(1, 2)?.contiguous()?, x[2].transpose(1, 2)?.contiguous()?);
        // repeat_kv: head i uses kv head i / G.
        let rep = |x: &Tensor| -> Result<Tensor> {
            let parts: Vec<Tensor> = (0..h).map(|i| x.narrow(1, i / (h / kv), 1)).collect::<Result<_>>()?;
            Tensor::cat(&parts, 1)
        };
        let (k, v) = (rep(&k)?, rep(&v)?);
        let s = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(&mask)?;
        let e = s.broadcast_sub(&s.max_keepdim(D::Minus1)?.detach())?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        p.matmul(&v)?.transpose(1, 2)?.reshape((b * t, h * d))
    };
    same_grads(&[&[b, t, h, d], &[b, t, kv, d], &[b, t, kv, d]], |x| attention(&x[0], &x[1], &x[2], &mask), reference);
}

#[test]
fn untracked_inputs_build_no_node() {
    let dev = Device::Cpu;
    let x = Tensor::new(values(6, 1).as_slice(), &dev).unwrap().reshape((2, 3)).unwrap();
    let w = Tensor::new(values(9, 2).as_slice(), &dev).unwrap().reshape((3, 3)).unwrap();
    assert!(!linear(&x, &w, None, None).unwrap().track_op());
    let a = Var::from_vec(values(3, 3), (1, 3), &dev).unwrap();
    let b = Var::from_vec(values(3, 4), (3, 1), &dev).unwrap();
    let y = linear(&x, &w, None, Some(LoraWeights { a: a.as_tensor(), b: b.as_tensor(), scale: 2.0 })).unwrap();
    assert!(y.track_op());
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(a.as_tensor()).is_some() && grads.get(b.as_tensor()).is_some());
    assert!(grads.get(&x).is_none(), "no gradient for an input that does not track");
}
