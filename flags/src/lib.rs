//! Command-line parsing for the workspace's binaries (`ws-uring`, its
//! examples, `loadgen`, `hostile`): argh's, with the exit statuses their docs
//! promise.

/// Parses the command line as `argh::from_env` does, but a bad flag (an
/// unknown one, a missing value, a value of the wrong type, an argument
/// that is not UTF-8) exits with status 2, like a value this tool refuses,
/// rather than argh's 1. `--help` prints to stdout and exits 0.
pub fn from_env<T: argh::TopLevelCommand>() -> T {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.into_string())
        .collect::<Result<_, _>>()
        .unwrap_or_else(|bad| {
            eprintln!("not UTF-8: {}", bad.to_string_lossy());
            std::process::exit(2)
        });
    parse(&argv).unwrap_or_else(|(output, status)| {
        if status == 0 {
            println!("{output}");
        } else {
            eprintln!("{output}");
        }
        std::process::exit(status)
    })
}

/// `argv` (the program's name first) parsed; `Err` holds what to print and
/// the exit status: 0 for `--help`, 2 for a bad flag.
pub fn parse<T: argh::TopLevelCommand>(argv: &[String]) -> Result<T, (String, i32)> {
    let name = argv.first().map_or("", String::as_str);
    let command = std::path::Path::new(name)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(name);
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    T::from_args(&[command], &rest).map_err(|exit| match exit.status {
        Ok(()) => (exit.output, 0),
        Err(()) => (
            format!(
                "{}\nRun {command} --help for more information.",
                exit.output
            ),
            2,
        ),
    })
}

/// For each binary's tests: runs the binary at `bin` with each of `bad`
/// (it must exit 2 and point to `--help` on stderr) and with `--help` (it
/// must exit 0 with its usage, naming `name`, on stdout). Panics otherwise.
pub fn assert_exit_statuses(bin: &str, name: &str, bad: &[&[&str]]) {
    use std::process::{Command, Output, Stdio};
    let run = |args: &[&str]| -> Output {
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
    };
    for args in bad {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--help"), "{stderr}");
    }
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let usage = String::from_utf8_lossy(&out.stdout);
    assert!(usage.starts_with(&format!("Usage: {name}")), "{usage}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(argh::FromArgs, Debug)]
    /// test flags
    struct Flags {
        /// a number
        #[argh(option, default = "1")]
        n: u32,
    }

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn bad_flags_exit_2_and_help_exits_0() {
        let parsed: Flags = parse(&argv(&["/usr/bin/tool", "--n", "7"])).unwrap();
        assert_eq!(parsed.n, 7);
        for bad in [
            &["tool", "--bogus"][..],
            &["tool", "--n", "x"],
            &["tool", "--n"],
        ] {
            let (output, status) = parse::<Flags>(&argv(bad)).unwrap_err();
            assert_eq!(status, 2, "{bad:?}: {output}");
            assert!(output.contains("Run tool --help"), "{output}");
        }
        let (help, status) = parse::<Flags>(&argv(&["./tool", "--help"])).unwrap_err();
        assert_eq!(status, 0);
        assert!(help.starts_with("Usage: tool"), "{help}");
    }
}
