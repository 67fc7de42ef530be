//! `bagssl-train analyze` end to end on a tiny run: the files, the JSON keys and sane values.

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bagssl-train"));
    c.env("BAGSSL_CACHE", std::env::temp_dir().join("bagssl-test-cache"));
    c
}

fn ok(args: &[&str]) -> String {
    let o = bin().args(args).output().expect("the binary runs");
    let t = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{args:?}:\n{t}");
    t
}

#[test]
fn analyze_a_tiny_run_writes_the_json_and_three_figures() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let r = run.to_str().unwrap();
    let sets = ["data.synthetic_images=200", "model.hidden=32", "model.proj=32", "train.batch_images=16"];
    let mut args = vec!["train", "--out", r, "--quiet", "--set", "train.epochs=1", "--set", "eval.probe_epochs=2"];
    sets.iter().for_each(|s| args.extend(["--set", s]));
    ok(&args);
    let out = dir.path().join("analysis");
    let ckpt = run.join("checkpoint.safetensors");
    let t = ok(&[
        "analyze",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--images",
        "100",
        "--test-images",
        "30",
        "--pool-images",
        "20",
        "--quiet",
    ]);
    assert!(t.contains("analysis.json"), "{t}");
    for f in ["whole_vs_bag.png", "neighbours.png", "accuracy.png"] {
        let img = image::open(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(img.width() > 300 && img.height() > 200, "{f}");
    }
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("analysis.json")).unwrap()).unwrap();
    let unit = |v: &serde_json::Value| v.as_f64().is_some_and(|x| (-1.0 - 1e-9..=1.0 + 1e-9).contains(&x));
    let scales = j["whole_vs_bag"]["scales"].as_array().unwrap();
    assert_eq!(scales.iter().map(|s| s["side"].as_u64().unwrap()).collect::<Vec<_>>(), [8, 12, 16]);
    for s in scales {
        let (k, cw, cf) = (
            s["k"].as_array().unwrap(),
            s["cosine_whole"].as_array().unwrap(),
            s["cosine_full_bag"].as_array().unwrap(),
        );
        assert_eq!(k.last().unwrap(), &s["grid"], "the curve ends at the full grid");
        assert!(k.len() == cw.len() && cw.len() == cf.len() && cw.iter().chain(cf).all(unit), "{s}");
        assert!((cf.last().unwrap().as_f64().unwrap() - 1.0).abs() < 1e-6, "the full bag against itself: {s}");
    }
    let n = &j["neighbours"];
    assert_eq!(n["shown"].as_array().unwrap().len(), 6);
    assert_eq!(n["stat_queries"], 20);
    for space in ["h", "z", "chance"] {
        let l = &n[space];
        assert!(l["mean_offset_px"].as_f64().unwrap() >= 0.0, "{l}");
        assert!(unit(&l["same_class"]) && unit(&l["same_position"]), "{l}");
    }
    for q in n["shown"].as_array().unwrap() {
        for space in ["h", "z"] {
            let list = q[space].as_array().unwrap();
            assert_eq!(list.len(), 8);
            assert!(list.iter().all(|x| x["image"] != q["query"]["image"] && unit(&x["cosine"])), "{q}");
        }
    }
    let acc = j["accuracy"]["knn"].as_array().unwrap();
    let names: Vec<&str> = acc.iter().map(|a| a["aggregation"].as_str().unwrap()).collect();
    for want in ["single patch", "grid bag (8px)", "whole image"] {
        assert!(names.contains(&want), "{names:?}");
    }
    assert!(acc.iter().all(|a| a["knn"].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x))), "{acc:?}");
}
