// Builds the site: every pages/*.txt file (first line the title, the rest paragraphs)
// becomes an HTML page in the output directory, with an index linking them all. Node's
// standard library only, so the build fetches nothing.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

const [src, out] = process.argv.slice(2);
if (!src || !out) {
  console.error("usage: node build.js SRC_DIR OUT_DIR");
  process.exit(2);
}

const escape = (s) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function page(title, body) {
  return `<!doctype html>\n<meta charset="utf-8">\n<title>${escape(title)}</title>\n` +
    `<link rel="stylesheet" href="site.css">\n${body}\n`;
}

fs.mkdirSync(out, { recursive: true });
const pages = fs.readdirSync(src).filter((f) => f.endsWith(".txt")).sort();
const links = [];
for (const file of pages) {
  const [title, ...rest] = fs.readFileSync(path.join(src, file), "utf8").trim().split("\n");
  const paragraphs = rest.join("\n").split(/\n\s*\n/).filter((p) => p.trim());
  const body = `<h1>${escape(title)}</h1>\n` +
    paragraphs.map((p) => `<p>${escape(p.trim())}</p>`).join("\n");
  const name = file.replace(/\.txt$/, ".html");
  fs.writeFileSync(path.join(out, name), page(title, body));
  links.push(`<li><a href="${name}">${escape(title)}</a></li>`);
}
fs.writeFileSync(path.join(out, "index.html"),
  page("static-site", `<h1>static-site</h1>\n<ul>\n${links.join("\n")}\n</ul>`));
fs.copyFileSync(path.join(src, "site.css"), path.join(out, "site.css"));
console.log(`built ${pages.length} pages and an index into ${out}`);
