//! COPY and ADD steps: planning what they write (context, another stage, an image,
//! downloads, heredocs), keying it by content, and writing it into the root.
use super::*;

impl StageExecutor<'_> {
    pub(super) fn step_copy(
        &self,
        lex: &ShellLex,
        ctx: &mut StepCtx<'_, '_>,
        transfer: &Transfer,
        from: Option<&str>,
        add: Option<&Add>,
    ) -> Result<FileOutcome, ExecutorError> {
        let step = ctx.step;
        let line = step.line;
        let keyword = if add.is_some() { "ADD" } else { "COPY" };
        let expanded = ctx
            .cursor
            .state
            .expand_transfer(lex, keyword, transfer)
            .map_err(|source| ExecutorError::State { line, source })?;
        let owner = match &expanded.chown {
            Some(spec) => Some(
                users::resolve_chown(&self.rootfs, spec)
                    .map_err(|source| ExecutorError::User { line, source })?,
            ),
            None => None,
        };
        let chmod = match &expanded.chmod {
            Some(c) => {
                Some(copy::parse_chmod(c).map_err(|source| ExecutorError::Copy { line, source })?)
            }
            None => None,
        };
        let env = ctx.cursor.state.expansion_env();
        let heredocs = transfer
            .heredocs
            .iter()
            .map(|h| HeredocSource {
                name: h.name.clone(),
                content: if h.expand {
                    expand_heredoc(&h.body(), &env)
                } else {
                    h.body()
                },
            })
            .collect();
        // URL sources are downloaded now, before the key, which must cover their content.
        // The staging directory lives until the step has run (or failed).
        let (downloads, _staging) = match add {
            Some(add) => self.fetch_sources(lex, add, &expanded.sources, ctx.cursor, line)?,
            None => (Vec::new(), None),
        };
        let spec = CopySpec {
            is_add: add.is_some(),
            sources: expanded.sources.clone(),
            heredocs,
            dest: expanded.dest.clone(),
            workdir: ctx.cursor.state.working_dir.clone(),
            owner,
            chmod,
            excludes: expanded.excludes.clone(),
            parents: transfer.parents,
            unpack: add.and_then(|a| a.unpack),
            downloads,
        };
        let stage_ctx;
        let context = match from {
            None => self.context,
            Some(name) => {
                let source = self.stage_source(name, line)?;
                stage_ctx = BuildContext::with_patterns(&source.root, &[] as &[&str])?;
                &stage_ctx
            }
        };
        let plan = copy::plan(context, &spec, &self.rootfs)
            .map_err(|source| ExecutorError::Copy { line, source })?;
        let history = ImageState::transfer_history(keyword, transfer, &expanded);
        let key = CacheKey::new(&ctx.cursor.parent_key, &history.created_by)
            .input("copy", &cache_key::digest_copy_plan(&plan)?)
            .args(arg_values(&ctx.cursor.state, &expanded.used_args))
            .digest();
        self.file_step(ctx, key, history, &[], |ex, _| {
            ex.apply_plan(&plan, &ex.rootfs, line)
        })
    }

    /// Downloads an ADD's HTTP(S) sources into a fresh staging directory under the cache
    /// root's `tmp/` (removed when the returned guard drops), checking `--checksum`
    /// (expanded like the sources). Git sources are refused here with a clear message.
    pub(super) fn fetch_sources(
        &self,
        lex: &ShellLex,
        add: &Add,
        sources: &[String],
        cursor: &Cursor,
        line: usize,
    ) -> Result<(Vec<remote::Download>, Option<tempfile::TempDir>), ExecutorError> {
        let fetch_err = |source| ExecutorError::Fetch { line, source };
        let checksum = match &add.checksum {
            Some(c) => {
                let value = lex
                    .process_word(c, &cursor.state.build_env)
                    .map_err(|e| ExecutorError::State {
                        line,
                        source: StateError::Expansion {
                            instruction: "ADD",
                            message: e.to_string(),
                        },
                    })?
                    .value;
                Some(remote::parse_checksum(&value).map_err(fetch_err)?)
            }
            None => None,
        };
        let mut downloads = Vec::new();
        let mut staging: Option<tempfile::TempDir> = None;
        for source in sources {
            if remote::is_git_url(source) {
                return Err(fetch_err(FetchError::Git {
                    url: source.clone(),
                }));
            }
            if !remote::is_http_url(source) {
                if checksum.is_some() && !add.transfer.heredocs.iter().any(|h| &h.name == source) {
                    return Err(fetch_err(FetchError::ChecksumNeedsUrl {
                        source_path: source.clone(),
                    }));
                }
                continue;
            }
            if downloads
                .iter()
                .any(|d: &remote::Download| &d.url == source)
            {
                continue;
            }
            let dir = match &staging {
                Some(d) => d.path().to_owned(),
                None => {
                    let tmp = self.layout.tmp();
                    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
                    let d = tempfile::Builder::new()
                        .prefix("add-")
                        .tempdir_in(&tmp)
                        .map_err(io_err("create a staging directory in", &tmp))?;
                    let path = d.path().to_owned();
                    staging = Some(d);
                    path
                }
            };
            let path = dir.join(format!("download-{}", downloads.len()));
            downloads.push(remote::fetch(source, &path, checksum.as_deref()).map_err(fetch_err)?);
        }
        Ok((downloads, staging))
    }

    pub(super) fn stage_source(
        &self,
        name: &str,
        line: usize,
    ) -> Result<&StageSource, ExecutorError> {
        let lower = name.to_ascii_lowercase();
        let by_name = self
            .stages
            .values()
            .find(|s| s.name.as_deref() == Some(lower.as_str()));
        let by_index = name.parse::<usize>().ok().and_then(|i| self.stages.get(&i));
        by_name.or(by_index).ok_or_else(|| ExecutorError::Missing {
            line,
            message: format!(
                "`{name}` is neither a stage given to this executor nor supported as an image"
            ),
        })
    }
}

/// `$NAME` and `${NAME}` in an unquoted heredoc body, with `\$` kept literal. Quotes are
/// left alone (a shell-word expansion would remove them), which is what a heredoc needs.
pub(super) fn expand_heredoc(body: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
            .to_string()
    };
    let chars: Vec<char> = body.chars().collect();
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
        } else if c == '$' && chars.get(i + 1) == Some(&'{') {
            match chars[i + 2..].iter().position(|c| *c == '}') {
                Some(end) => {
                    let name: String = chars[i + 2..i + 2 + end].iter().collect();
                    out.push_str(&lookup(&name));
                    i += end + 3;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else if c == '$'
            && chars
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_')
        {
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            let name: String = chars[i + 1..j].iter().collect();
            out.push_str(&lookup(&name));
            i = j;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heredoc_expansion_keeps_quotes() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(
            expand_heredoc("echo \"$A\" ${A} \\$A $1", &env),
            "echo \"x\" x $A $1"
        );
    }
}
