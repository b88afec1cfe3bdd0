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
