//! Shell words: a walkthrough line split as `sh` would split a simple command, for the lines
//! swarmkit runs itself (docker commands, assertions' arguments) rather than through a shell.

/// Splits a line into words as `sh` would for a simple command: quotes, backslashes and a
/// trailing `# comment`. None when the line uses any other shell syntax (pipes, redirections,
/// expansions, globs), which only a real shell may interpret.
pub fn split_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '$' | '`' => return None,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\') => word.push(c),
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next()?);
            }
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' | '*' | '?' => return None,
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn split_words_like_sh() {
        assert_eq!(
            split_words(
                r#"docker service create --name psql -e POSTGRES_PASSWORD=mypass postgres"#
            ),
            Some(s(&[
                "docker",
                "service",
                "create",
                "--name",
                "psql",
                "-e",
                "POSTGRES_PASSWORD=mypass",
                "postgres"
            ]))
        );
        assert_eq!(
            split_words(r#"docker x --format '{{.Name}} a' "b \"c\"" d\ e # comment"#),
            Some(s(&[
                "docker",
                "x",
                "--format",
                "{{.Name}} a",
                "b \"c\"",
                "d e"
            ]))
        );
        assert_eq!(split_words("a'b'c"), Some(s(&["abc"])));
        assert_eq!(split_words("docker service ls | wc -l"), None);
        assert_eq!(split_words("echo $HOME"), None);
        assert_eq!(split_words("echo 'unterminated"), None);
    }
}
