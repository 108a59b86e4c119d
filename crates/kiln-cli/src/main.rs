fn main() {
    std::process::exit(kiln_cli::main());
}
