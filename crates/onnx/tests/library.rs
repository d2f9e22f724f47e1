//! Finding ONNX Runtime's shared library. One test function, run alone in its own process
//! (`gptpipe_testkit::alone`), because it changes the process environment, and the other tests of the
//! binary load ONNX Runtime from the path it reads.

use gptpipe_onnx::runtime::library_path;

#[test]
fn library_is_found_and_ort_dylib_path_overrides() {
    if !gptpipe_testkit::alone("library::library_is_found_and_ort_dylib_path_overrides") {
        return;
    }
    std::env::remove_var("ORT_DYLIB_PATH");
    // The dev set-up has .venv/libonnxruntime.so above target/.
    let found = library_path().unwrap();
    let name = found.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("libonnxruntime.so"), "{}", found.display());

    std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so");
    let err = format!("{:#}", library_path().unwrap_err());
    assert!(err.contains("ORT_DYLIB_PATH=/nonexistent"), "{err}");

    std::env::set_var("ORT_DYLIB_PATH", &found);
    assert_eq!(library_path().unwrap(), found);
    std::env::remove_var("ORT_DYLIB_PATH");
}
