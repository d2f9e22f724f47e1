//! The libtorch-free build (`--no-default-features --features onnx`): prepare works, and a
//! stage that needs libtorch fails with a message that says so, before any work.

use super::Project;

#[test]
fn a_finetune_stage_says_this_build_has_no_libtorch() {
    let p = Project::new();
    p.file("data/a.csv", "title\nhello there\n");
    p.file(
        "p.toml",
        "[pipeline]\nname = \"t\"\nworkdir = \"work\"\n\n\
         [stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n\n\
         [stages.train]\nkind = \"finetune\"\ndataset = \"@a\"\nmodel = { n_layer = 1, n_head = 1, n_embd = 8, n_ctx = 16 }\n",
    );
    let run = p.run(&["run", "p.toml"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("finetune stages are not available in this build")
            && run.stderr.contains("without libtorch"),
        "{}",
        run.stderr
    );
    assert!(p.path("work/a/dataset.txt").is_file(), "prepare still ran");
    assert!(!p.path("work/train").exists());
}
