//! `bagssl-train bench`: times training steps (median after warm-up) and grid-evaluation
//! throughput; prints ms/step, patches/s, GFLOP/s and peak memory, then one JSON line.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::cli::BenchArgs;
use crate::commands::train::device_label;
use crate::setup;

/// the reference configuration (docs/DEFINITIONS.md §11), on synthetic data of CIFAR-10's size.
const REFERENCE: &str = include_str!("../../../../configs/reference.toml");

pub fn run(args: BenchArgs) -> Result<()> {
    let preset = ["data.synthetic_images=50000", "data.synthetic_size=32", "device=\"cpu\""];
    let cfg = setup::resolve_config_or(&args.cfg, REFERENCE, "configs/reference.toml (embedded)", &preset)?;
    if args.decode {
        return decode_bench(&cfg);
    }
    let device = setup::resolve_device(&cfg)?;
    let data = setup::load_datasets(&cfg, false)?;
    let (model_cfg, mut train_cfg) = setup::model_and_train_config(&cfg, data.train.len())?;
    // The schedule must not reach zero inside the benchmark.
    train_cfg.total_steps = train_cfg.total_steps.max((args.warmup + args.steps) as u64 * 10);
    let gpu_free_before = gpu_free_bytes(&device)?;
    let mut trainer = bagssl_model::Trainer::new(model_cfg, train_cfg, &device)?;

    for _ in 0..args.warmup {
        trainer.step(&data.train)?;
    }
    // Steps run back to back as in training (a GPU step does not wait for its predecessor), timed
    // in chunks with the device drained at each end: ms/step is the median chunk mean. A CPU step
    // is synchronous, so there a chunk is one step and ms/step the median step.
    let chunk = if device.is_cuda() { 10 } else { 1 };
    let steps = args.steps.max(1);
    let mut input_waits = Vec::with_capacity(steps);
    let mut timed = |monitor: bool| -> Result<Vec<f64>> {
        let mut times = Vec::with_capacity(steps.div_ceil(chunk));
        gpu_free_bytes(&device)?;
        let mut done = 0;
        while done < steps {
            let k = chunk.min(steps - done);
            let t = Instant::now();
            for _ in 0..k {
                trainer.step_monitored(&data.train, monitor)?;
                if !monitor {
                    input_waits.push(trainer.last_input_wait().as_secs_f64() * 1e3);
                }
            }
            gpu_free_bytes(&device)?; // waits for the GPU, so the time is the steps', not their launch's
            times.push(t.elapsed().as_secs_f64() * 1e3 / k as f64);
            done += k;
        }
        Ok(times)
    };
    let mut times = timed(false)?;
    // The collapse monitor's cost: as many steps again, every one measured (training measures one
    // in `train.log_every`).
    let mut monitored = timed(true)?;
    monitored.sort_by(f64::total_cmp);
    let ms_monitored = monitored[monitored.len() / 2];
    // Per-op breakdown: as many steps again, timed op by op (kept out of the figures above).
    let profile = if args.profile { Some(profile_steps(&mut trainer, &data.train, steps)?) } else { None };

    // The mean too: the PyTorch reference reports the mean of its steps.
    let ms_mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    input_waits.sort_by(f64::total_cmp);
    let input_ms = input_waits[input_waits.len() / 2];
    let n = (cfg.train.batch_images * cfg.patches.per_image) as f64;
    let model_flops = trainer.model().forward_flops_per_patch();
    let z_width = *trainer.model().config().projector_widths().last().unwrap_or(&0);
    let flops = model_flops.step(n as usize, z_width);
    let patches_per_s = n / (ms / 1e3);
    let gflops = flops / (ms / 1e3) / 1e9;

    // Evaluation: every grid patch of `eval_images` images through the eval-mode encoder.
    let (mut eval_patches_per_s, mut eval_images_per_s, mut eval_gflops) = (0.0, 0.0, 0.0);
    if args.eval_images > 0 {
        let k = args.eval_images.min(data.train.len());
        let idx: Vec<usize> = (0..k).collect();
        let store = data.train.subset(&idx);
        let model = trainer.model();
        let p = cfg.patches.input_size();
        let grid = bagssl_eval::Grid { patch: p, stride: cfg.eval.stride };
        let grid_len = bagssl_data::grid_positions(store.height, store.width, p, cfg.eval.stride).len();
        bagssl_eval::embed_bag(model, &store.subset(&idx[..k.min(64)]), grid, cfg.eval.batch_images)?;
        let mut reps = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            bagssl_eval::embed_bag(model, &store, grid, cfg.eval.batch_images)?;
            reps.push(t.elapsed().as_secs_f64());
        }
        reps.sort_by(f64::total_cmp);
        let dt = reps[1];
        eval_images_per_s = k as f64 / dt;
        eval_patches_per_s = (k * grid_len) as f64 / dt;
        eval_gflops = eval_patches_per_s * model_flops.encoder / 1e9;
    }
    let peak = setup::peak_rss_mib().unwrap_or(0.0);
    // The caching allocator keeps what the steps needed, so device memory in use after them (less
    // what was in use before the model existed) is the run's GPU footprint.
    let gpu_mib = match (gpu_free_before, gpu_free_bytes(&device)?) {
        (Some(before), Some(after)) => Some(before.saturating_sub(after) as f64 / (1024.0 * 1024.0)),
        _ => None,
    };

    println!(
        "config: patch {} | {} patches x {} images | {} | projector {:?} | device {} | {} GEMMs",
        cfg.patches.input_size(),
        cfg.patches.per_image,
        cfg.train.batch_images,
        encoder_label(trainer.model().config()),
        trainer.model().config().projector_widths(),
        device_label(&device),
        setup::precision_label(&cfg)
    );
    println!(
        "train step: {ms:.3} ms (median of {} {}, min {:.3}, max {:.3}) | {:.0} patches/s | {gflops:.1} GFLOP/s ({:.2} GFLOP/step)",
        times.len(),
        if chunk == 1 { "steps".to_string() } else { format!("means of {chunk} steps") },
        times[0],
        times[times.len() - 1],
        patches_per_s,
        flops / 1e9
    );
    println!(
        "input wait: {input_ms:.3} ms a step (median; {:.1}% of a step): batch draw, views, {}",
        100.0 * input_ms / ms,
        if device.is_cuda() { "spec upload and gather launch" } else { "gather and augmentation from the store" }
    );
    println!(
        "collapse monitor: {ms_monitored:.3} ms a measured step, +{:.3} ms; +{:.2}% of a step at train.log_every = {}",
        ms_monitored - ms,
        100.0 * (ms_monitored - ms) / ms / cfg.train.log_every as f64,
        cfg.train.log_every
    );
    if args.eval_images > 0 {
        println!(
            "grid eval: {eval_images_per_s:.0} images/s | {eval_patches_per_s:.0} patches/s | {eval_gflops:.1} GFLOP/s"
        );
    }
    if let Some((ops, wall)) = &profile {
        print_profile(ops, *wall, steps, device.is_cuda());
    }
    println!("peak memory: {peak:.1} MiB resident");
    if let Some(g) = gpu_mib {
        println!("GPU memory: {g:.1} MiB in use by this run");
    }
    println!(
        "{}",
        json!({
            "ms_per_step": ms,
            "ms_per_step_mean": ms_mean,
            "ms_per_monitored_step": ms_monitored,
            "input_wait_ms": input_ms,
            "patches_per_s": patches_per_s,
            "gflops": gflops,
            "flop_per_step": flops,
            "eval_images_per_s": eval_images_per_s,
            "eval_patches_per_s": eval_patches_per_s,
            "eval_gflops": eval_gflops,
            "peak_rss_mib": peak,
            "gpu_memory_mib": gpu_mib,
            "device": device_label(&device),
            "steps": steps,
            "precision": setup::precision_label(&cfg),
            "config": {
                "patch": cfg.patches.input_size(), "per_image": cfg.patches.per_image,
                "batch_images": cfg.train.batch_images, "hidden": cfg.model.hidden,
                "proj": cfg.model.proj, "layers": cfg.model.layers,
                "arch": cfg.model.arch.name(), "widths": &cfg.model.widths, "blocks": &cfg.model.blocks,
                "stem": cfg.model.stem, "projector": &cfg.model.projector,
            },
        })
    );
    Ok(())
}

/// `bench --decode`: the training data decoded into memory (no cache) with one rayon thread and
/// with every core, best of three each, after an untimed pass that warms the page cache, so the
/// figure is decode and fit, not disk reads. File listing is included (it is part of every decode).
fn decode_bench(cfg: &crate::config::Config) -> Result<()> {
    anyhow::ensure!(
        !cfg.data.path.is_empty(),
        "bench --decode needs --data (a folder, shards or a CIFAR-10 binary folder)"
    );
    let path = std::path::Path::new(&cfg.data.path);
    let mut opts = setup::load_options(cfg, bagssl_data::Split::Train, false);
    opts.cache_dir = None;
    let cores = rayon::current_num_threads();
    // (images, "HxW", seconds)
    let decode = |threads: usize| -> Result<(usize, String, f64)> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        let t = Instant::now();
        let store = pool.install(|| bagssl_data::load(path, &opts))?;
        Ok((store.len(), format!("{}x{}", store.height, store.width), t.elapsed().as_secs_f64()))
    };
    decode(cores)?;
    let mut rows = Vec::new();
    for threads in [1, cores] {
        // Best of three: the machines are shared.
        let mut best = decode(threads)?;
        for _ in 0..2 {
            let r = decode(threads)?;
            if r.2 < best.2 {
                best = r;
            }
        }
        let (n, size, s) = best;
        let rate = n as f64 / s;
        println!(
            "decode: {n} images -> {size} in {s:.2} s on {threads} thread(s): {rate:.0} images/s, {:.0} images/s per core",
            rate / threads as f64
        );
        rows.push(json!({ "threads": threads, "images": n, "seconds": s, "images_per_s": rate,
                          "images_per_s_per_core": rate / threads as f64 }));
        if cores == 1 {
            break;
        }
    }
    println!(
        "{}",
        json!({ "decode": rows, "data": cfg.data.path, "image_size": cfg.data.image_size, "resize": &cfg.data.resize })
    );
    Ok(())
}

/// Free device memory in bytes on CUDA (after finishing queued work); None on the CPU.
fn gpu_free_bytes(device: &bagssl_autograd::Device) -> Result<Option<usize>> {
    match device {
        bagssl_autograd::Device::Cpu => Ok(None),
        bagssl_autograd::Device::Cuda(gpu) => {
            gpu.synchronize()?;
            Ok(Some(gpu.memory_info()?.0))
        }
    }
}

/// The encoder in words: the MLP's sizes, or the ResNet's layout.
fn encoder_label(m: &bagssl_model::ModelConfig) -> String {
    match m.resnet_layout() {
        None => format!("mlp: {} layers of {}", m.layers, m.hidden),
        Some(l) => {
            format!("{}: {:?} widths {:?} blocks {:?}, {:?} stem", m.arch.name(), l.block, l.widths, l.blocks, m.stem)
        }
    }
}

/// `steps` more steps with [`bagssl_autograd::profile`] on: the per-op totals and the wall time.
fn profile_steps(
    trainer: &mut bagssl_model::Trainer,
    train: &bagssl_data::ImageStore,
    steps: usize,
) -> Result<(Vec<bagssl_autograd::profile::OpTime>, f64)> {
    use bagssl_autograd::profile;
    profile::take();
    profile::enable(true);
    let t = Instant::now();
    let run = (0..steps).try_for_each(|_| trainer.step(train).map(drop));
    let wall = t.elapsed().as_secs_f64();
    profile::enable(false);
    run?;
    Ok((profile::take(), wall))
}

/// The per-op table of `bench --profile`: ms per step, calls per step, share of the step.
fn print_profile(ops: &[bagssl_autograd::profile::OpTime], wall: f64, steps: usize, cuda: bool) {
    let per_step = |s: f64| s * 1e3 / steps as f64;
    let total = per_step(wall);
    println!(
        "where a step's {total:.3} ms go ({steps} profiled steps{}):",
        if cuda { ", host-side launch times" } else { "" }
    );
    println!("  {:<22} {:>9} {:>8} {:>7}", "op", "ms/step", "calls", "share");
    let mut in_ops = 0.0;
    for o in ops {
        in_ops += per_step(o.seconds);
        println!(
            "  {:<22} {:>9.3} {:>8.1} {:>6.1}%",
            o.op,
            per_step(o.seconds),
            o.calls as f64 / steps as f64,
            100.0 * per_step(o.seconds) / total
        );
    }
    let rest = total - in_ops;
    println!("  {:<22} {:>9.3} {:>8} {:>6.1}%", "outside ops", rest, "", 100.0 * rest / total);
}
