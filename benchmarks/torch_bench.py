"""Times the PyTorch reference (../shared/reference/torch_bagssl.py) on one configuration:
training steps (the reference's own --bench-steps path) and grid evaluation throughput, and
reports the process's peak resident memory. Prints one JSON line per measurement.

Run by benchmarks/compare_torch.sh; not part of CI."""
import argparse, json, os, resource, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--reference", required=True, help="path to torch_bagssl.py")
ap.add_argument("--data", required=True)
ap.add_argument("--patch", type=int, default=8)
ap.add_argument("--n-patches", type=int, default=16)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--hidden", type=int, default=512)
ap.add_argument("--proj", type=int, default=512)
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--limit", type=int, default=5000)
ap.add_argument("--eval-images", type=int, default=512)
ap.add_argument("--eval-stride", type=int, default=2)
ap.add_argument("--amp", action="store_true")
args = ap.parse_args()

sys.path.insert(0, os.path.dirname(os.path.abspath(args.reference)))
import torch  # noqa: E402
import torch_bagssl as ref  # noqa: E402

# 1. Training steps: exactly the reference's own benchmark path.
argv = ["torch_bagssl.py", "--data", args.data, "--patch", str(args.patch), "--n-patches", str(args.n_patches),
        "--batch", str(args.batch), "--hidden", str(args.hidden), "--proj", str(args.proj), "--layers",
        str(args.layers), "--bench-steps", str(args.steps), "--limit", str(args.limit)]
if args.amp:
    argv.append("--amp")
sys.argv = argv
ref.main()
rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

# 2. Grid evaluation throughput of the same encoder shape (eval-mode BN, mean over the grid).
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
enc = ref.PatchMLP(args.patch, args.hidden, args.layers).to(dev)
x = torch.randint(0, 256, (args.eval_images, 32, 32, 3), dtype=torch.uint8, device=dev)
ref.embed_images(enc, x[:64], args.patch, args.eval_stride, 500, args.amp)  # warm-up
if dev.type == "cuda":
    torch.cuda.synchronize()
reps = []
for _ in range(3):
    t = time.time()
    ref.embed_images(enc, x, args.patch, args.eval_stride, 500, args.amp)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    reps.append(time.time() - t)
dt = sorted(reps)[1]
grid = ((32 - args.patch) // args.eval_stride + 1) ** 2
print(json.dumps(dict(event="eval_bench", images_per_s=round(args.eval_images / dt, 1),
                      patches_per_s=round(args.eval_images * grid / dt), eval_s=round(dt, 4))), flush=True)
print(json.dumps(dict(event="memory", peak_rss_mib=round(rss_train, 1),
                      torch=torch.__version__, threads=torch.get_num_threads())), flush=True)
