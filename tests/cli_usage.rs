//! Wrong command lines through the real binary: Garden (stdout not a terminal) gets one line on
//! stdout in GrootFS's words and exit 1; a person at a terminal gets clap's whole message once.

#[allow(dead_code)]
mod common;

use std::process::{Command, Stdio};

use common::{Run, bin};

fn run(args: &[&str]) -> Run {
    Command::new(bin())
        .args(["--store", "/nonexistent/nestfs-usage-store"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nestfs")
        .into()
}

/// One line on stdout, nothing on stderr, exit 1.
fn one_line(args: &[&str]) -> String {
    let r = run(args);
    assert_eq!(r.code, 1, "{args:?}: {r:#?}");
    assert_eq!(r.stderr, "", "{args:?}: stderr is Garden's log stream");
    assert_eq!(r.stdout.lines().count(), 1, "{args:?}: {r:#?}");
    r.stdout.trim_end().to_string()
}

#[test]
fn missing_arguments_get_grootfs_messages() {
    for (args, want) in [
        (
            &["create"][..],
            "invalid arguments - usage: create [options] <image> <id>",
        ),
        (
            &["create", "docker:///busybox"],
            "invalid arguments - usage: create [options] <image> <id>",
        ),
        (
            &["create", "a", "b", "c"],
            "invalid arguments - usage: create [options] <image> <id>",
        ),
        (
            &["stats"],
            "invalid arguments - usage: stats [options] <id|image path>",
        ),
        (
            &["init-store", "extra"],
            "invalid arguments - usage: init-store --store <path>",
        ),
        (&["delete"], "id was not specified"),
    ] {
        assert_eq!(one_line(args), want, "{args:?}");
    }
}

#[test]
fn negative_sizes_and_conflicting_flags_get_grootfs_messages() {
    for (args, want) in [
        (
            &["create", "--disk-limit-size-bytes", "-5", "img", "id"][..],
            "invalid argument: disk limit cannot be negative",
        ),
        (
            &["clean", "--threshold-bytes", "-1"],
            "invalid argument: clean threshold cannot be negative",
        ),
        (
            &["create", "--threshold-bytes", "-1", "img", "id"],
            "invalid argument: clean threshold cannot be negative",
        ),
        (
            &["create", "--with-clean", "--without-clean", "img", "id"],
            "with-clean and without-clean cannot be used together",
        ),
        (
            &["create", "--without-clean", "--with-clean", "img", "id"],
            "with-clean and without-clean cannot be used together",
        ),
    ] {
        assert_eq!(one_line(args), want, "{args:?}");
    }
}

#[test]
fn typos_keep_the_suggestion_on_the_one_line() {
    assert_eq!(
        one_line(&["creat", "img", "id"]),
        "unrecognized subcommand 'creat' (did you mean 'clean' or 'create'?)"
    );
    assert_eq!(
        one_line(&["create", "--disk-limit", "5", "img", "id"]),
        "unexpected argument '--disk-limit' found (did you mean '--disk-limit-size-bytes'?)"
    );
}

#[test]
fn help_and_version_go_to_stdout_and_succeed() {
    let r = run(&["create", "--help"]);
    assert_eq!(r.code, 0, "{r:#?}");
    for option in [
        "--disk-limit-size-bytes",
        "--exclude-image-from-quota",
        "--insecure-registry",
        "--with-clean",
        "--threshold-bytes",
        "--skip-layer-validation",
        "--without-mount",
        ":@",
    ] {
        assert!(r.stdout.contains(option), "create --help names {option}");
    }
    let r = run(&["--version"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("nestfs "), "{r:#?}");
}

/// Every option `--help` lists has a description (a line with the option and nothing after it
/// would be an undocumented option).
#[test]
fn every_option_is_described() {
    for cmd in [
        &["--help"][..],
        &["create", "--help"],
        &["init-store", "--help"],
        &["clean", "--help"],
        &["list", "--help"],
        &["remount", "--help"],
    ] {
        let r = run(cmd);
        assert_eq!(r.code, 0, "{r:#?}");
        // clap puts a description after the option, or on the next lines when they are long.
        let lines: Vec<&str> = r.stdout.lines().collect();
        let undocumented: Vec<&str> = (0..lines.len())
            .filter(|&i| lines[i].trim_start().starts_with('-'))
            .filter(|&i| {
                let l = lines[i].trim_start();
                let same_line = l.find("  ").is_some_and(|end| !l[end..].trim().is_empty());
                let next_line = lines.get(i + 1).is_some_and(|n| {
                    n.starts_with("          ") && !n.trim_start().starts_with('-')
                });
                !same_line && !next_line
            })
            .map(|i| lines[i])
            .collect();
        assert!(undocumented.is_empty(), "{cmd:?}: {undocumented:?}");
    }
}

/// At a terminal (`script` gives the command a pty), the whole clap message with its usage and
/// tip is printed once, and the one-line form is not printed beside it.
#[test]
fn a_person_at_a_terminal_gets_the_whole_message_once() {
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!("{} create --disk-limit 5 img id", bin()))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else {
        eprintln!("SKIP a_person_at_a_terminal: script (util-linux) is not installed");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("Usage:"), "{text}");
    assert!(text.contains("--disk-limit-size-bytes"), "{text}");
    assert_eq!(text.matches("unexpected argument").count(), 1, "{text}");
}
