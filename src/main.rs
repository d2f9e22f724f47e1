fn main() {
    std::process::exit(gptpipe::cli::main());
}
