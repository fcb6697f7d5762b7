//! `caravel-selftests`: see `--help`. The cases are x86_64 guests; on other
//! architectures the binary reports that, kselftest-style, and skips.

#[cfg(not(target_arch = "x86_64"))]
fn main() -> std::process::ExitCode {
    println!("TAP version 13\n1..0 # SKIP caravel-selftests has x86_64 cases only");
    std::process::ExitCode::from(4)
}

#[cfg(target_arch = "x86_64")]
mod x86 {

    use std::process::ExitCode;
    use std::time::Duration;

    use clap::Parser;
    use selftests::cases::{self, Case};
    use selftests::report::{self, Totals, EXIT_SKIP};
    use selftests::runner::{run_here, run_in_child, RESULT_PREFIX};

    /// A KVM conformance suite: checks that this host's /dev/kvm behaves as its
    /// API promises (sync_regs, vCPU resets, sregs, memory slots, vCPU limits and
    /// MSR exits, binary stats) and measures exit costs.
    ///
    /// Prints kselftest TAP (or JSON). Each case runs on a fresh VM in its own
    /// process. Exit status: 0 when every case passed (skips allowed), 1 when
    /// one failed, 4 when all were skipped, 2 for a bad command line.
    #[derive(Debug, Parser)]
    #[command(name = "caravel-selftests", version)]
    struct Args {
        /// List the cases (name and what each checks) and exit.
        #[arg(long)]
        list: bool,
        /// Run only the cases matching these globs (`*`, `?`; comma-separated),
        /// e.g. `sync_regs.*,memslots.readonly`.
        #[arg(long, value_name = "GLOB")]
        filter: Option<String>,
        /// TAP version 13 output, as kselftest (the default).
        #[arg(long, conflicts_with = "json")]
        tap: bool,
        /// One JSON document with every case's verdict, message and diagnostics.
        #[arg(long)]
        json: bool,
        /// Seconds a case may take before it is killed and reported `not ok`.
        #[arg(long, value_name = "S", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
        /// Do not hold an idle VM for the run: every case's VM is then the
        /// host's only one, and the kernel live-patches its scheduler around
        /// each (this wedged nested-SVM QEMU TCG hosts; docs/selftests.md).
        #[arg(long)]
        no_keeper: bool,
        /// Run no case: for S seconds create and destroy the host's only VM
        /// in a loop while another thread yields (issue #18's reproducer of
        /// the nested wedge, without the suite; docs/selftests.md).
        #[arg(long, value_name = "S", conflicts_with_all = ["list", "filter", "json"],
          value_parser = clap::value_parser!(u64).range(1..=86400))]
        churn: Option<u64>,
        /// With --churn: each round's vCPU also enters the guest once (to
        /// its first port write) before the VM is destroyed.
        #[arg(long, requires = "churn")]
        churn_run: bool,
        /// Internal: run one case in this process and print its result line.
        #[arg(long, value_name = "NAME", hide = true)]
        run_case: Option<String>,
    }

    fn child(all: &[Case], name: &str) -> ExitCode {
        let Some(case) = all.iter().find(|c| c.name == name) else {
            eprintln!("caravel-selftests: error: --run-case {name}: no such case (see --list)");
            return ExitCode::from(2);
        };
        let r = run_here(case);
        match serde_json::to_string(&r) {
            Ok(line) => println!("{RESULT_PREFIX}{line}"),
            Err(e) => eprintln!("cannot encode the result: {e}"),
        }
        // Threads a case left blocked in KVM_RUN die with the process.
        std::process::exit(0);
    }

    pub fn main() -> ExitCode {
        let args = Args::parse();
        let all = cases::all();
        if let Some(name) = &args.run_case {
            return child(&all, name);
        }
        if let Some(secs) = args.churn {
            let time = Duration::from_secs(secs);
            return match selftests::churn::run(time, Duration::from_secs(5), args.churn_run) {
                Ok(n) => {
                    println!("ok churn: {n} VMs created and destroyed in {secs} s");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("not ok churn: {e}");
                    ExitCode::from(1)
                }
            };
        }
        let selected: Vec<&Case> = all
            .iter()
            .filter(|c| {
                args.filter
                    .as_deref()
                    .is_none_or(|f| selftests::glob::matches_any(f, c.name))
            })
            .collect();
        if args.list {
            for c in &selected {
                println!("{:<40} {}", c.name, c.about);
            }
            return ExitCode::SUCCESS;
        }
        if selected.is_empty() {
            let f = args.filter.unwrap_or_default();
            if args.json {
                println!("{}", report::json(&[], &Totals::default()));
            } else {
                println!("TAP version 13\n1..0 # SKIP no case matches --filter {f}");
            }
            return ExitCode::from(EXIT_SKIP as u8);
        }
        let timeout = Duration::from_secs(args.timeout);
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("caravel-selftests: error: cannot find this executable: {e}");
                return ExitCode::from(1);
            }
        };
        let mut totals = Totals::default();
        let mut reports = Vec::new();
        // Held until the run ends (see selftests::keeper).
        let keeper = (!args.no_keeper).then(selftests::keeper::Keeper::hold);
        if !args.json {
            println!("{}", report::tap_header(selected.len()));
            println!("# host KVM backend: {}", cases::host_backend());
            match &keeper {
                Some(Ok(_)) => println!(
                    "# holding one idle VM for the run (no kernel code patching between cases)"
                ),
                Some(Err(e)) => {
                    println!("# no idle VM held ({e}): the kernel patches code around every case")
                }
                None => println!("# --no-keeper: the kernel patches code around every case"),
            }
        }
        for (i, c) in selected.iter().enumerate() {
            let r = run_in_child(&exe, c.name, timeout);
            totals.add(r.verdict);
            if !args.json {
                println!("{}", report::tap_case(i + 1, &r));
            }
            reports.push(r);
        }
        drop(keeper);
        if args.json {
            println!("{}", report::json(&reports, &totals));
        } else {
            println!("{}", totals.tap_line());
        }
        ExitCode::from(totals.exit_code() as u8)
    }
}

#[cfg(target_arch = "x86_64")]
fn main() -> std::process::ExitCode {
    x86::main()
}
