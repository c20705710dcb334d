//! The static report: the dashboard page with uPlot, the script and the data inlined.

use crate::data::{snapshot, Run};
use crate::{APP_CSS, APP_JS, PAGE_HTML, UPLOT_CSS, UPLOT_JS};

/// `</script>` inside JSON would end the script element early.
fn script_safe(s: &str) -> String {
    s.replace("</", "<\\/")
}

/// One self-contained HTML file with the runs' metrics and results.
pub fn render(runs: &[Run], title: &str) -> String {
    let data = script_safe(&snapshot(runs).to_string());
    let head = format!(
        "<style>{UPLOT_CSS}</style>\n<style>{APP_CSS}</style>\n<script>{}</script>\n<script>window.V4POST_DATA = {data};</script>",
        script_safe(UPLOT_JS)
    );
    PAGE_HTML
        .replace("<!--TITLE-->", &html_escape(title))
        .replace("<!--HEAD-->", &head)
        .replace("<!--APP-->", &format!("<script>{}</script>", script_safe(APP_JS)))
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
