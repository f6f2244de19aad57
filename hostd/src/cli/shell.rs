//! `hostctl shell`: hostctl commands at a prompt, with history and tab completion of
//! command words and instance names (for the front panel's serial console).

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use hostd_proto::{ListFilter, Request, Response};
use rustyline::completion::Completer;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use super::{Cli, CliError};
use crate::client::Client;

/// Completes the first word from hostctl's commands, later words from subcommands and
/// instance names.
struct Completion {
    commands: Vec<String>,
    socket: PathBuf,
}

impl Completion {
    fn instances(&self) -> Vec<String> {
        let Ok(mut client) = Client::connect(&self.socket) else {
            return Vec::new();
        };
        match client.call(Request::ListInstances(ListFilter::default())) {
            Ok(Response::Instances(list)) => list.iter().map(|i| i.name.to_string()).collect(),
            _ => Vec::new(),
        }
    }
}

impl Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let before = &line[..pos];
        let start = before.rfind(' ').map_or(0, |i| i + 1);
        let word = &before[start..];
        let words: Vec<&str> = before[..start].split_whitespace().collect();
        let pool: Vec<String> = match words.first() {
            None => self.commands.clone(),
            Some(&"template") if words.len() == 1 => ["list", "show", "create", "delete"]
                .map(String::from)
                .to_vec(),
            Some(&"fastpath") if words.len() == 1 => {
                ["status", "restart"].map(String::from).to_vec()
            }
            Some(&"stack") if words.len() == 1 => {
                ["list", "show", "create", "quota", "admins", "delete"]
                    .map(String::from)
                    .to_vec()
            }
            Some(_) => self.instances(),
        };
        let mut matches: Vec<String> = pool.into_iter().filter(|c| c.starts_with(word)).collect();
        matches.sort();
        Ok((start, matches))
    }
}

impl Hinter for Completion {
    type Hint = String;
}
impl Highlighter for Completion {}
impl Validator for Completion {}
impl Helper for Completion {}

/// Runs the prompt until `exit`, `quit` or end of input.
pub fn run(socket: Option<PathBuf>) -> Result<(), CliError> {
    let commands: Vec<String> = Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "shell")
        .map(|c| c.get_name().to_owned())
        .chain(["exit".to_owned(), "help".to_owned()])
        .collect();
    let resolved = socket.clone().unwrap_or_else(crate::client::default_socket);
    let mut editor: Editor<Completion, DefaultHistory> =
        Editor::new().map_err(|e| CliError::Io(std::io::Error::other(e)))?;
    editor.set_helper(Some(Completion {
        commands,
        socket: resolved,
    }));
    let history = dirs::data_dir().map(|d| d.join("hostctl_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!("hostctl shell: type a command (help lists them), Tab completes, exit leaves.");
    loop {
        let line = match editor.readline("hostctl> ") {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if line == "exit" || line == "quit" {
            break;
        }
        let Some(words) = shlex::split(line) else {
            eprintln!("hostctl: unbalanced quotes");
            continue;
        };
        let mut argv = vec!["hostctl".to_owned()];
        if let Some(socket) = &socket {
            argv.push("--socket".into());
            argv.push(socket.to_string_lossy().into_owned());
        }
        argv.extend(words);
        match Cli::try_parse_from(argv) {
            Ok(cli) if matches!(cli.command, super::Cmd::Shell) => {
                eprintln!("hostctl: already in the shell")
            }
            Ok(cli) => {
                super::run(&cli);
            }
            Err(err) => {
                let _ = err.print();
            }
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustyline::history::DefaultHistory;

    #[test]
    fn tab_completes_commands_and_subcommands() {
        let completion = Completion {
            commands: vec![
                "start".into(),
                "status".into(),
                "stop".into(),
                "stack".into(),
            ],
            socket: PathBuf::from("/nonexistent/hostd.sock"),
        };
        let history = DefaultHistory::new();
        let context = Context::new(&history);
        let (start, found) = completion.complete("st", 2, &context).unwrap();
        assert_eq!(
            (start, found),
            (
                0,
                vec![
                    "stack".into(),
                    "start".into(),
                    "status".into(),
                    "stop".into()
                ]
            )
        );
        let (start, found) = completion.complete("stack q", 7, &context).unwrap();
        assert_eq!((start, found), (6, vec!["quota".to_owned()]));
        // Instance names come from hostd; without one there are none to offer.
        let (_, found) = completion.complete("start we", 8, &context).unwrap();
        assert!(found.is_empty());
    }
}
