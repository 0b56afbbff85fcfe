// Shared by the build scripts of every crate that produces a binary linked against
// libtorch (included with `include!`). It
//   * records an rpath to the libtorch that torch-sys built against, so binaries and
//     test executables run with no LD_LIBRARY_PATH (LD_LIBRARY_PATH still wins, which
//     is how a binary built here runs against another machine's torch 2.11 libs);
//   * and a second, relative one, $ORIGIN/../site-packages/torch/lib: the layout of
//     the worker image and of the release bundle (PREFIX/bin/stylefarm-worker beside
//     PREFIX/site-packages/{torch,nvidia}), so an installed worker needs no settings;
//   * forces libtorch_cuda.so into DT_NEEDED: the linker's as-needed rule would drop
//     it (nothing references its symbols), and then CUDA is never registered.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // declaring any rerun-if turns off cargo's default (rerun on any package change)
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build-support/libtorch_link.rs");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib_dir = std::path::PathBuf::from(lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../site-packages/torch/lib");
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib_dir.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
