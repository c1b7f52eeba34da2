//! `fence_tandem_lab`: the lab's power switch as a fence-agents program. Reads
//! `name=value` lines on stdin (or `-o ACTION -n HOST -a LAB` options) and exits 0 on
//! success, 1 on failure, 2 for `status` of a host that is off.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(tandem_fencing::lab_switch::main_with(&args));
}
