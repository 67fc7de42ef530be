"""Loss curve of the PyTorch reference, step by step, to lay beside a bagssl run's metrics.jsonl.

Imports the model, patch sampler and loss from ../shared/reference/torch_bagssl.py (same
definitions) and runs its training loop with bagssl's schedule (linear warm-up over
`--warmup-steps`, cosine to `--total-steps`), printing one JSON line every `--log-every` steps
and stopping after `--steps`. No evaluation: this is for comparing optimisation, not accuracy.

    python3 benchmarks/torch_loss_trace.py --ref ../shared/reference/torch_bagssl.py \
        --data DIR --hidden 512 --proj 512 --batch 64 --warmup-steps 703 --total-steps 14060 --steps 1500
"""
import argparse, importlib.util, json, math, os, sys, time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default=os.path.join(os.path.dirname(__file__), "../../shared/reference/torch_bagssl.py"))
    ap.add_argument("--data", required=True)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--n-patches", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--proj", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1e-5)
    ap.add_argument("--warmup-steps", type=int, required=True)
    ap.add_argument("--total-steps", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    spec = importlib.util.spec_from_file_location("torch_bagssl", a.ref)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    xtr, _ = ref.load_split(a.data, "train")
    perm = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(12345))
    xtr = xtr[perm[int(round(xtr.shape[0] * a.val_fraction)):]].to(dev)
    enc = ref.PatchMLP(a.patch, a.hidden, a.layers)
    proj = ref.Projector(enc.dim, a.proj)
    enc, proj = enc.to(dev), proj.to(dev)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(proj.parameters()), lr=a.lr, weight_decay=a.wd)
    warm, total = a.warmup_steps, a.total_steps
    # bagssl's schedule: step s (0-based) uses lr * (s + 1) / warm during warm-up, then cosine.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(warm, 1) if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(total - warm, 1))))
    gen = torch.Generator(device=dev).manual_seed(a.seed)
    spe = xtr.shape[0] // a.batch
    step, t0 = 0, time.time()
    while step < a.steps:
        order = torch.randperm(xtr.shape[0], device=dev, generator=gen)
        for i in range(spe):
            if step >= a.steps:
                break
            pt = ref.sample_patches(xtr[order[i * a.batch:(i + 1) * a.batch]], a.n_patches, a.patch, gen)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.amp):
                z = proj(enc(pt))
            loss, parts = ref.bag_vicreg(z, a.n_patches)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            step += 1
            if step % a.log_every == 0 or step == a.steps:
                print(json.dumps(dict(event="step", step=step, loss=loss.item(), invariance=parts[0], variance=parts[1],
                                      covariance=parts[2], lr=lr, elapsed_s=round(time.time() - t0, 2))), flush=True)


if __name__ == "__main__":
    main()
