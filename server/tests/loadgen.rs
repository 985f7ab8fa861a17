//! The load generator's binary, briefly, on the tiny model: its load report and its
//! HTTP-against-in-process comparison print every line they promise and exit 0; bad arguments
//! are refused with a message and a failing status. Nothing here checks a speed.

use std::process::{Command, Output};

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("the loadgen binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_spawned_run_reports_every_line() {
    let out = loadgen(&[
        "--spawn",
        "--size",
        "tiny",
        "--duration",
        "1",
        "--clients",
        "4",
        "--whole-share",
        "0.5",
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "loadgen: http://127.0.0.1:",
        "unloaded: p50 ",
        "requests: ",
        "throughput: ",
        "latency: p50 ",
        "goodput: ",
        "server overhead",
        "cpu: generator ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "no {line:?} in\n{text}"
        );
    }
    assert!(text.contains(" 0 errors, 0 unfinished"), "{text}");
    // Whole replies were sent too, so both finishing overheads were timed.
    let overhead = text
        .lines()
        .find(|l| l.starts_with("server overhead"))
        .unwrap_or_default();
    for phase in ["admit", "finish_stream", "finish_whole"] {
        assert!(overhead.contains(&format!("{phase} ")), "{overhead}");
        assert!(
            !overhead.contains(&format!("{phase} -")),
            "{phase} not timed: {overhead}"
        );
    }
}

#[test]
fn a_comparison_prints_its_ratios() {
    let out = loadgen(&[
        "--spawn",
        "--compare",
        "--size",
        "tiny",
        "--rounds",
        "1",
        "--requests",
        "32",
        "--clients",
        "4",
        "--warmup",
        "false",
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "compare: round 1: HTTP ",
        "compare: HTTP over in-process throughput: median ",
        "compare: CPU per request (median): HTTP ",
        "compare: HTTP over in-process requests per CPU-second",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "no {line:?} in\n{text}"
        );
    }
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    for (args, says) in [
        (&["--url", "http://192.0.2.1:80"][..], "loopback only"),
        (&["--url", "https://127.0.0.1:1"][..], "only plain http"),
        (&[][..], "either --url"),
        (
            &["--url", "http://127.0.0.1:1", "--compare"][..],
            "--compare needs --spawn",
        ),
        (&["--spawn", "--rate", "0"][..], "--rate 0"),
        (&["--spawn", "--long-share", "2"][..], "--long-share 2"),
    ] {
        let out = loadgen(args);
        assert!(!out.status.success(), "{args:?} was taken");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
