//! `become_flags` read with the account switch's own option grammar, so
//! that a flag Spindle cannot honour fails the task with its name instead
//! of doing something else quietly.
//!
//! A child agent is a long-lived process that talks over sudo's (or su's)
//! stdin and stdout: flags that shape the account or the environment it
//! runs in are passed on as given; flags that stop sudo from running a
//! command in the foreground, or that pick the account behind Ansible's
//! back, are refused.

/// sudo's options (sudo 1.9): short letter, long name, whether it takes a
/// value, and why Spindle cannot honour it (`None`: passed on).
const SUDO: &[(char, &str, bool, Option<&str>)] = &[
    (
        'A',
        "askpass",
        false,
        Some("it reads the password through an askpass helper"),
    ),
    ('B', "bell", false, None),
    (
        'b',
        "background",
        false,
        Some("it runs the command in the background"),
    ),
    ('C', "close-from", true, None),
    ('D', "chdir", true, None),
    ('E', "preserve-env", false, None),
    (
        'e',
        "edit",
        false,
        Some("it edits files instead of running a command"),
    ),
    ('g', "group", true, None),
    ('H', "set-home", false, None),
    (
        'h',
        "host",
        true,
        Some("it runs the command on another host"),
    ),
    ('i', "login", false, None),
    ('K', "remove-timestamp", false, Some("it runs no command")),
    ('k', "reset-timestamp", false, None),
    (
        'l',
        "list",
        false,
        Some("it lists privileges instead of running a command"),
    ),
    ('N', "no-update", false, None),
    ('n', "non-interactive", false, None),
    ('P', "preserve-groups", false, None),
    ('p', "prompt", true, None),
    ('R', "chroot", true, None),
    ('r', "role", true, None),
    ('S', "stdin", false, None),
    ('s', "shell", false, None),
    (
        'T',
        "command-timeout",
        true,
        Some("it would end the account's agent after the timeout"),
    ),
    ('t', "type", true, None),
    (
        'U',
        "other-user",
        true,
        Some("it applies to listing privileges only"),
    ),
    (
        'u',
        "user",
        true,
        Some("the account comes from become_user"),
    ),
    ('V', "version", false, Some("it runs no command")),
    ('v', "validate", false, Some("it runs no command")),
];

/// Checks sudo `flags` (already split into words, as Ansible's
/// `become_flags`); the error names the first flag that cannot be honoured.
pub fn check_sudo(flags: &[String]) -> Result<(), String> {
    let refuse = |flag: &str, why: &str| {
        Err(format!(
            "become_flags: Spindle cannot honour sudo's {flag}: {why}"
        ))
    };
    let mut words = flags.iter();
    while let Some(word) = words.next() {
        if word == "--" || !word.starts_with('-') || word == "-" {
            return refuse(word, "become_flags may hold only options");
        }
        if let Some(long) = word.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            // --preserve-env=LIST is the one long option with an optional value.
            let Some(&(_, _, takes, why)) = SUDO.iter().find(|o| o.1 == name) else {
                return refuse(word, "not an option of sudo");
            };
            if let Some(why) = why {
                return refuse(word, why);
            }
            if takes && value.is_none() && words.next().is_none() {
                return refuse(word, "it lacks its value");
            }
            continue;
        }
        // Short options, bundled as getopt allows: -HSn, -uroot, -u root.
        let letters: Vec<char> = word[1..].chars().collect();
        for (i, &c) in letters.iter().enumerate() {
            let Some(&(_, _, takes, why)) = SUDO.iter().find(|o| o.0 == c) else {
                return refuse(&format!("-{c}"), "not an option of sudo");
            };
            if let Some(why) = why {
                return refuse(&format!("-{c}"), why);
            }
            if takes {
                if i + 1 == letters.len() && words.next().is_none() {
                    return refuse(&format!("-{c}"), "it lacks its value");
                }
                break; // the rest of the word is the value
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_sudo;

    fn check(flags: &str) -> Result<(), String> {
        let words: Vec<String> = flags.split_whitespace().map(str::to_owned).collect();
        check_sudo(&words)
    }

    #[test]
    fn ansibles_defaults_and_environment_flags_pass() {
        for ok in [
            "",
            "-H -S -n",
            "-HSn",
            "-E",
            "--preserve-env=PATH,HOME",
            "-i",
            "-g wheel",
            "-gwheel",
            "--chdir /tmp",
            "--chdir=/tmp",
            "-p prompt",
            "-r role -t type",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn flags_that_cannot_be_honoured_are_named() {
        for (bad, named) in [
            ("-b", "-b"),
            ("-H -b", "-b"),
            ("-Hb", "-b"),
            ("--background", "--background"),
            ("-u bob", "-u"),
            ("-Hubob", "-u"),
            ("-l", "-l"),
            ("-e", "-e"),
            ("-x", "-x"),
            ("--frobnicate", "--frobnicate"),
            ("-g", "-g"),
            ("--chdir", "--chdir"),
            ("id", "id"),
        ] {
            let err = check(bad).expect_err(bad);
            assert!(err.contains(&format!("sudo's {named}:")), "{bad:?}: {err}");
        }
    }
}
