//! Bad model folders and sources give errors that say what is wrong.

use crate::common::*;
use gptpipe_core::stage::ModelSource;
use gptpipe_torch::{device, source, weights};
use tch::Device;

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn model_folder_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    make_hf_model(&dir, 1, 2, 16, 20, 50, 1);

    // A wrong shape names the tensor and both shapes.
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["n_positions"] = 24.into();
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    let e = err_of(weights::load_folder(&dir, Device::Cpu));
    assert!(
        e.contains("transformer.wpe.weight") && e.contains("[20, 16]") && e.contains("[24, 16]"),
        "{e}"
    );

    // Missing files.
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = err_of(weights::load_folder(&dir, Device::Cpu));
    assert!(e.contains("no config.json"), "{e}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = err_of(weights::load_folder(&empty, Device::Cpu));
    assert!(e.contains("no model.safetensors"), "{e}");

    // A pickle is a model folder, read as data only: one torch.save did not write is an
    // error naming it (torch.save's own: tests/safety/pickles.rs).
    let pickle = tmp.path().join("pickle");
    std::fs::create_dir(&pickle).unwrap();
    std::fs::write(
        pickle.join("config.json"),
        r#"{"n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 16}"#,
    )
    .unwrap();
    std::fs::write(pickle.join("pytorch_model.bin"), b"not really").unwrap();
    source::model_folder(&ModelSource::Folder(pickle.clone())).unwrap();
    let e = err_of(weights::load_folder(&pickle, Device::Cpu));
    assert!(
        e.contains("pickle/pytorch_model.bin") && e.contains("neither a zip nor a pickle"),
        "{e}"
    );

    // Not a safetensors file.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("config.json"), "{}").unwrap();
    std::fs::write(bad.join("model.safetensors"), b"garbage").unwrap();
    let e = err_of(weights::load_folder(&bad, Device::Cpu));
    assert!(e.contains("not a valid safetensors file"), "{e}");
}

#[test]
fn hub_id_offline_names_the_local_alternative() {
    // It sets HF_HOME and HF_HUB_OFFLINE for the whole process: it runs alone in its own.
    if !gptpipe_testkit::alone("errors::hub_id_offline_names_the_local_alternative") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", tmp.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let e = err_of(source::model_folder(&ModelSource::Hub(
        "someone/gpt2-tiny".into(),
    )));
    assert!(
        e.contains("someone/gpt2-tiny") && e.contains("local folder"),
        "{e}"
    );
}

#[test]
fn cuda_without_a_gpu_is_an_error() {
    if tch::Cuda::is_available() {
        assert!(device::parse_device("cuda").is_ok());
        return;
    }
    for d in ["cuda", "cuda:1"] {
        let e = err_of(device::parse_device(d));
        assert!(e.contains("no CUDA GPU"), "{e}");
    }
    assert_eq!(device::parse_device("auto").unwrap(), Device::Cpu);
    let e = err_of(device::parse_device("tpu"));
    assert!(e.contains("\"tpu\""), "{e}");
}
