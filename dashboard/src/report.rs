//! The static report: the dashboard page with uPlot, the script and the data inlined, under
//! a Content-Security-Policy that lets only those inline scripts run ([`crate::csp`]).

use crate::data::{snapshot, Run};
use crate::{csp, APP_CSS, APP_JS, PAGE_HTML, UPLOT_CSS, UPLOT_JS};

/// `</script>` inside JSON would end the script element early.
fn script_safe(s: &str) -> String {
    s.replace("</", "<\\/")
}

/// One self-contained HTML file with the runs' metrics and results. A `<meta>`
/// Content-Security-Policy allows its own inline scripts and styles (by hash) and nothing else.
pub fn render(runs: &[Run], title: &str) -> String {
    let data = format!("window.V4POST_DATA = {};", json_script_safe(&snapshot(runs).to_string()));
    let (uplot, app) = (script_safe(UPLOT_JS), script_safe(APP_JS));
    let policy = csp::for_report(&[&uplot, &data, &app], &[UPLOT_CSS, APP_CSS]);
    let head = format!(
        "{}\n<style>{UPLOT_CSS}</style>\n<style>{APP_CSS}</style>\n<script>{uplot}</script>\n<script>{data}</script>",
        csp::meta(&policy)
    );
    // the data last: names in it are never taken for placeholders
    PAGE_HTML
        .replace("<!--TITLE-->", &html_escape(title))
        .replace("<!--APP-->", &format!("<script>{app}</script>"))
        .replace("<!--HEAD-->", &head)
}

/// JSON inside `<script>`: `<` only occurs in its strings, where `\u003c` reads the same,
/// so no `</script>` or `<!--` in a name can change how the page is parsed.
fn json_script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}
