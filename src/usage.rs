//! What a wrong command line prints. Garden reads one line on stdout (and GrootFS's wording for
//! the cases GrootFS words itself); a person at a terminal gets clap's whole message, usage and
//! "did you mean" included, once, on stderr. Both exit 1, as GrootFS does.

use std::io::IsTerminal;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Prints `e` (from parsing `args` as `cli`) where it belongs and returns the exit code.
pub fn report(e: &clap::Error, args: &[String], cli: &clap::Command) -> i32 {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        print!("{e}");
        return 0;
    }
    if std::io::stderr().is_terminal() {
        eprint!("{}", e.render().ansi());
    }
    if !std::io::stdout().is_terminal() {
        println!("{}", one_line(e, subcommand(args, cli)));
    }
    1
}

/// The subcommand named on the command line, if any (clap's error does not say).
fn subcommand<'a>(args: &'a [String], cli: &clap::Command) -> Option<&'a str> {
    args.iter()
        .skip(1)
        .map(String::as_str)
        .find(|a| cli.find_subcommand(a).is_some())
}

/// GrootFS's usage line for the commands whose missing or extra arguments it reports.
fn grootfs_usage(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "create" => "create [options] <image> <id>",
        "stats" => "stats [options] <id|image path>",
        "init-store" => "init-store --store <path>",
        _ => return None,
    })
}

/// A parser for a byte count that says, as GrootFS does, "invalid argument: WHAT cannot be
/// negative".
pub fn byte_count(what: &'static str) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |s| match s.parse::<i64>() {
        Ok(n) if n < 0 => Err(format!("invalid argument: {what} cannot be negative")),
        _ => s.parse::<u64>().map_err(|e| format!("{what}: {e}")),
    }
}

/// The one line for Garden: GrootFS's words where it has them, else clap's first line with
/// its suggestion folded in.
pub fn one_line(e: &clap::Error, cmd: Option<&str>) -> String {
    let wrong_count = matches!(
        e.kind(),
        ErrorKind::MissingRequiredArgument | ErrorKind::WrongNumberOfValues
    ) || (e.kind() == ErrorKind::UnknownArgument
        && e.get(ContextKind::InvalidArg)
            .is_some_and(|a| !a.to_string().starts_with('-')));
    if wrong_count && let Some(cmd) = cmd {
        if cmd == "delete" {
            return "id was not specified".into();
        }
        if let Some(usage) = grootfs_usage(cmd) {
            return format!("invalid arguments - usage: {usage}");
        }
    }
    if e.kind() == ErrorKind::ArgumentConflict
        && [ContextKind::InvalidArg, ContextKind::PriorArg]
            .iter()
            .all(|k| e.get(*k).is_some_and(|a| a.to_string().ends_with("-clean")))
    {
        return "with-clean and without-clean cannot be used together".into();
    }
    if e.kind() == ErrorKind::ValueValidation
        && let Some(why) = std::error::Error::source(e).map(|s| s.to_string())
        && why.starts_with("invalid argument:")
    {
        return why;
    }
    let text = e.render().to_string();
    let mut line = text
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    let similar: Vec<String> = [ContextKind::SuggestedArg, ContextKind::SuggestedSubcommand]
        .into_iter()
        .filter_map(|k| match e.get(k) {
            Some(ContextValue::String(s)) => Some(vec![s.clone()]),
            Some(ContextValue::Strings(v)) => Some(v.clone()),
            _ => None,
        })
        .flatten()
        .map(|s| format!("'{s}'"))
        .collect();
    if !similar.is_empty() {
        line.push_str(&format!(" (did you mean {}?)", similar.join(" or ")));
    }
    line
}
