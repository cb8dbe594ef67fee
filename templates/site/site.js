// Search and filters for the catalog page. The query and filters live in the query string
// (?q=...&section=...), so a shared link reproduces the view; the hash stays free for paper anchors.
(function () {
  "use strict";

  var records = JSON.parse(document.getElementById("site_data").textContent);
  var list = document.getElementById("paper_list");
  var form = document.getElementById("site_filters");
  var count = document.getElementById("result_count");
  var articles = {};
  records.forEach(function (record) {
    articles[record.id] = document.getElementById(record.id);
  });

  // Each filter: its form control and the URL parameter that holds it.
  var controls = {
    q: document.getElementById("filter_q"),
    section: document.getElementById("filter_section"),
    from: document.getElementById("filter_from"),
    to: document.getElementById("filter_to"),
    venue: document.getElementById("filter_venue"),
    code: document.getElementById("filter_code"),
    impl: document.getElementById("filter_impl"),
    verification: document.getElementById("filter_verification")
  };

  var index = new MiniSearch({
    fields: ["method", "title", "authors", "description"],
    extractField: function (record, field) {
      return field === "authors" ? record.authors.join(" ") : record[field];
    },
    searchOptions: {
      boost: { method: 3, title: 2 },
      prefix: true,
      fuzzy: function (term) { return term.length > 4 ? 0.2 : false; },
      combineWith: "AND"
    }
  });
  index.addAll(records);

  function value(name) {
    var control = controls[name];
    if (control.type === "checkbox") return control.checked ? control.value : "";
    return name === "q" ? control.value.trim() : control.value;
  }

  function state() {
    var current = {};
    Object.keys(controls).forEach(function (name) { current[name] = value(name); });
    return current;
  }

  function setControl(name, text) {
    var control = controls[name];
    if (control.type === "checkbox") {
      control.checked = text === control.value;
    } else if (control.tagName === "SELECT") {
      var known = Array.prototype.some.call(control.options, function (option) { return option.value === text; });
      control.value = known ? text : "";
    } else {
      control.value = text;
    }
  }

  function passes(record, current) {
    if (current.section && record.sections.indexOf(current.section) < 0) return false;
    if (current.from && record.year < Number(current.from)) return false;
    if (current.to && record.year > Number(current.to)) return false;
    if (current.venue && record.venue !== current.venue) return false;
    if (current.code && !record.official) return false;
    if (current.impl === "yes" && record.levels.length === 0) return false;
    if (current.impl === "no" && record.levels.length > 0) return false;
    if (current.verification && record.levels.indexOf(current.verification) < 0) return false;
    return true;
  }

  function writeUrl(current) {
    var params = new URLSearchParams();
    Object.keys(controls).forEach(function (name) {
      if (current[name]) params.set(name, current[name]);
    });
    var query = params.toString();
    var url = window.location.pathname + (query ? "?" + query : "") + window.location.hash;
    if (url !== window.location.pathname + window.location.search + window.location.hash) {
      window.history.replaceState(null, "", url);
    }
  }

  function apply(updateUrl) {
    var current = state();
    var order = records.map(function (record) { return record.id; });
    var found = null;
    if (current.q) {
      found = {};
      order = index.search(current.q).map(function (hit) { found[hit.id] = true; return hit.id; });
    }
    var shown = 0;
    records.forEach(function (record) {
      var visible = (!found || found[record.id] === true) && passes(record, current);
      articles[record.id].hidden = !visible;
      if (visible) shown += 1;
    });
    // Matches first, by relevance when searching; hidden papers keep their place after them.
    var placed = {};
    order.concat(records.map(function (record) { return record.id; })).forEach(function (id) {
      if (placed[id]) return;
      placed[id] = true;
      list.appendChild(articles[id]);
    });
    count.textContent = shown === records.length
      ? records.length + " papers"
      : shown + " of " + records.length + " papers";
    if (updateUrl) writeUrl(current);
  }

  function readUrl() {
    var params = new URLSearchParams(window.location.search);
    Object.keys(controls).forEach(function (name) { setControl(name, params.get(name) || ""); });
  }

  form.hidden = false;
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  form.addEventListener("input", function () { apply(true); });
  form.addEventListener("change", function () { apply(true); });
  form.addEventListener("reset", function () { window.setTimeout(function () { apply(true); }, 0); });
  window.addEventListener("popstate", function () { readUrl(); apply(false); });

  // Section names under each paper link to "?section=id": filter in place instead of reloading.
  list.addEventListener("click", function (event) {
    var link = event.target.closest("a.section");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    setControl("section", new URLSearchParams(link.getAttribute("href").slice(1)).get("section") || "");
    apply(true);
    window.scrollTo(0, 0);
  });

  readUrl();
  apply(false);
  if (window.location.hash) {
    var target = document.getElementById(decodeURIComponent(window.location.hash.slice(1)));
    if (target && !target.hidden) target.scrollIntoView();
  }
}());
