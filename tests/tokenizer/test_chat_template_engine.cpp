// Engine semantics against Jinja itself: each template below is rendered by our engine and by
// transformers' compiled Jinja environment (trim_blocks, lstrip_blocks, loopcontrols, HF's tojson)
// with the same context, and must match byte for byte -- or raise in both. Covers expressions,
// filters, tests, methods, scoping, loops, whitespace control and Python-style printing.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "llmtune/tokenizer/chat_template.h"
#include "llmtune/util/error.h"
#include "support/chat_template_oracle.h"

namespace llmtune::tokenizer {
namespace {

using nlohmann::ordered_json;
using testing::OracleMode;

const std::vector<std::string>& engine_templates() {
  static const std::vector<std::string> t = {
      R"tpl({% for a, b in d|items %}{{ loop.index }}:{{ a }}={{ b }}{% if not loop.last %}, {% endif %}{% endfor %})tpl",
      R"tpl({{ items[::-1] }}|{{ items[1:] }}|{{ items[-1] }}|{{ x[::-1] }}|{{ "héllo"[1:3] }}|{{ items[:-1] }}|{{ items[5] }}|{{ items[-2:] }})tpl",
      R"tpl({{ 1 == 1.0 }}{{ true == 1 }}{{ "a" ~ none ~ 1.5 ~ true }}{{ 10 / 4 }}{{ 2 ** 10 }}{{ 2 ** -1 }}{{ 7 % -3 }}{{ -7 // 2 }}{{ 7.5 // 2 }}{{ -7.5 % 2 }}{{ n * "ab" }})tpl",
      R"tpl({{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ d|tojson(sort_keys=true) }}|{{ d|tojson(separators=(",", ":")) }}|{{ "é\n\"\u0001"|tojson }}|{{ 1e16|tojson }}|{{ [1.0, 0.1, 1e-5, 123456789.123]|tojson }})tpl",
      R"tpl({{ d }}|{{ [1, "a", none, true, 1.5, {"k": "it's"}] }}|{{ (1,) }}|{{ ("a", "b\n") }}|{{ 1e16 }}|{{ 1.0 }}|{{ f }}|{{ 1/3 }}|{{ "\xa0" ~ ["\xa0é\u2028"] }})tpl",
      R"tpl({{ s|trim }}|{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.split() }}|{{ "a,b,,c".split(",") }}|{{ "a b c".split(" ", 1) }}|{{ s|upper }}|{{ s|lower }}|{{ "hello wORLD-foo(bar"|title }}|{{ "hello wORLD"|capitalize }}|{{ s.title() }}|{{ s|replace("l", "L") }}|{{ s.replace("l", "L", 1) }})tpl",
      R"tpl({{ s.startswith("  He") }}{{ s.endswith(("x", "  ")) }}{{ x.upper() }}{{ x.lower() }}{{ "xyx".strip("x") }})tpl",
      R"tpl({% for m in msgs %}{{ m.role }}{{ m['content']|trim }}{{ m.missing }}{% endfor %}{{ msgs|selectattr("role", "equalto", "user")|list|length }}{{ msgs|map(attribute="role")|join("+") }}{{ msgs|rejectattr("role", "eq", "user")|map(attribute="content")|first }})tpl",
      R"tpl({{ items|select("odd")|list }}{{ [0, 1, "", "a", none]|select|list }}{{ ["a", "b", "a"]|reject("equalto", "a")|list }}{{ ["A", "a", "b"]|unique|list }}{{ items|first }}{{ items|last }}{{ x|list }}{{ d|list }}{{ items|length }}{{ x|length }}{{ d|length }})tpl",
      R"tpl({{ undefined_var }}|{{ undefined_var is defined }}|{{ undefined_var is undefined }}|{{ undefined_var|default("dflt") }}|{{ e|default("dflt") }}|{{ e|default("dflt", true) }}|{{ undefined_var|length }}|{% for i in undefined_var %}x{% else %}empty{% endfor %}|{{ undefined_var is iterable }}|{{ "a" in undefined_var }})tpl",
      R"tpl({{ none is none }}{{ d is mapping }}{{ items is iterable }}{{ x is string }}{{ n is number }}{{ true is number }}{{ items is sequence }}{{ true is true }}{{ 1 is true }}{{ false is boolean }}{{ n is integer }}{{ f is float }}{{ x is equalto "Hi" }}{{ n is eq 3 }}{{ x is not none }}{{ none is not defined }})tpl",
      R"tpl({{ "i" in x }}{{ "b" in d }}{{ 2 in items }}{{ 5 not in items }}{{ "z" not in x }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ "a" < "b" }}{{ not x }}{{ x and n }}{{ e or "fallback" }}{{ none or e }})tpl",
      R"tpl({{ "yes" if n > 2 else "no" }}|{{ "yes" if n > 5 }}|{{ x if x else "" }}|{{ (n + 1) * 2 - 1 }}|{{ n - -1 }}|{{ -n|abs }}|{{ x ~ n ~ "!" }}|{{ x + "!" }}|{{ "%d" if false else "ok" }})tpl",
      R"tpl({% set y = 1 %}{% for i in range(3) %}{{ y }}{% set y = y + 1 %}{{ y }};{% endfor %}{{ y }}|{% for i in range(3) %}{% if i == 0 %}{% set z = 5 %}{% endif %}{{ z }};{% endfor %}|{% if true %}{% set w = 3 %}{% endif %}{{ w }})tpl",
      R"tpl({% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}|{% for i in items if i > 1 %}{{ loop.index }}/{{ loop.length }}/{{ loop.revindex }}:{{ i }}{% endfor %}|{% for i in [] %}x{% else %}none{% endfor %}|{{ range(2, 10, 3)|list }})tpl",
      R"tpl({% set ns = namespace(found=false, count=0) %}{% for m in msgs %}{% if m.role == "user" %}{% set ns.found = true %}{% endif %}{% set ns.count = ns.count + 1 %}{% endfor %}{{ ns.found }}{{ ns.count }}{{ ns }})tpl",
      R"tpl({% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = (1, 2) %}{{ t }}{% set l = [1, 2] + [3] %}{{ l }}{% set dd = {"k": [1, {"z": none}], "n": 1.5} %}{{ dd }}{{ dd.k[1].z }}{{ dd["n"] }})tpl",
      R"tpl({{ d.get("b") }}{{ d.get("zz") }}{{ d.get("zz", "dflt") }}{{ d.keys()|list }}{{ d.values()|list }}{{ d.items()|list }}{{ d.items is defined }}{{ x.foo is defined }})tpl",
      R"tpl({% set cap %}captured {{ x }}{% endset %}[{{ cap }}]{{ dict(a=1, b="x") }}{{ "%s"|length }}{{ "3"|int + 1 }}{{ "3.7"|int }}{{ "x"|int }}{{ 3.9|int }}{{ "2.5"|float }}{{ 5|string ~ "x" }}{{ items|join(", ") }}{{ [1, none]|join }})tpl",
      R"tpl(Line one
    {% if true %}
    indented text
    {% endif %}
  {%- if true %} stripped {% endif -%}
   after
{# comment #}
text   {#- trimmed comment -#}   more
{%+ if true %}keep{% endif +%}
x {{- " y " -}} z)tpl",
      R"tpl({% for m in msgs %}
    {{ m.role }}
{% endfor %}
tail)tpl",
      R"tpl({{ x.y.z }})tpl",
      R"tpl({{ x + 1 }})tpl",
      R"tpl({{ raise_exception("custom failure " ~ x) }})tpl",
      R"tpl({{ undefined_var.attr }})tpl",
      R"tpl({{ items[0:1] ~ x }}{{ none.attr is defined }}{{ x[10] is defined }})tpl",
      R"tpl({{ "\u00e9\t\\n\x41\101\q" }}|{{ 'single "dq"' }}|{{ "a" "b" }})tpl",
      R"tpl({{ loop }})tpl",
      R"tpl({% set ns = namespace() %}{% set ns._x = 1 %})tpl",
      R"tpl({{ (x) }}{{ () }}{{ [] }}{{ {} }}{{ [1,] }}{{ {"a": 1,} }})tpl",
      R"tpl({{ 1 if true else 2 if false else 3 }}{{ not 1 == 2 }}{{ 2 ** 3 ** 2 }}{{ -2 ** 2 }}{{ 1 + 2 ~ 3 }}
)tpl",
      // strftime_now is local time, like Python's datetime.now().strftime.
      R"tpl({{ strftime_now("%Y-%m-%d") }}|{{ strftime_now is defined }}|{{ raise_exception is defined }})tpl",
  };
  return t;
}

ordered_json engine_context() {
  return ordered_json::parse(R"({"x": "Hi", "n": 3, "items": [3, 1, 2], "d": {"b": 1, "a": [1, 2.5, null, true]},
    "msgs": [{"role": "user", "content": " a "}, {"role": "assistant", "content": "b"}],
    "s": "  Hello World  ", "f": 0.1, "e": ""})");
}

struct EngineCase {
  std::string source;
  size_t handle;
};

const std::vector<EngineCase>& engine_cases() {
  static const std::vector<EngineCase> cases = [] {
    std::vector<EngineCase> out;
    for (const auto& t : engine_templates())
      out.push_back({t, testing::register_oracle_case(t, OracleMode::Jinja, engine_context())});
    return out;
  }();
  return cases;
}

// {% generation %}: the rendered text and the spans it covers, against HF's AssistantTracker.
const std::string kGenerationTemplate =
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content | trim }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ m.content }}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

ordered_json generation_messages() {
  return ordered_json::parse(R"([{"role": "user", "content": "Grüße 👋"}, {"role": "assistant", "content": " Hallo ✓ "},
    {"role": "user", "content": "again"}, {"role": "assistant", "content": "wieder 日本"}])");
}

[[maybe_unused]] const bool kRegistered = [] {
  engine_cases();
  return true;
}();

size_t generation_handle() {
  static const size_t h = testing::register_oracle_case(
      kGenerationTemplate, OracleMode::Hf,
      {{"messages", generation_messages()}, {"add_generation_prompt", true}});
  return h;
}
[[maybe_unused]] const size_t kGenerationHandle = generation_handle();

TEST(ChatTemplateEngine, MatchesJinja) {
  int rendered = 0, raised = 0;
  for (const EngineCase& c : engine_cases()) {
    SCOPED_TRACE("template: " + c.source);
    const testing::OracleResult& ref = testing::oracle_result(c.handle);
    std::string ours;
    bool ok = true;
    try {
      ours = ChatTemplate(c.source).render(engine_context());
    } catch (const TemplateError& e) {
      ok = false;
      ours = e.what();
    }
    if (!ref.ok) {
      EXPECT_FALSE(ok) << "Jinja raised (" << ref.error << ") but we rendered: " << ours;
      ++raised;
      continue;
    }
    ASSERT_TRUE(ok) << "we raised but Jinja rendered: " << ours;
    EXPECT_EQ(ours, ref.output);
    ++rendered;
  }
  EXPECT_GE(rendered, 20);
  EXPECT_GE(raised, 4);
}

TEST(ChatTemplateEngine, GenerationSpansMatchTransformers) {
  ChatTemplate tmpl(kGenerationTemplate);
  EXPECT_TRUE(tmpl.has_generation_blocks());
  RenderedChat r = tmpl.render_with_spans(chat_template_context(generation_messages(), true, "", ""));
  const testing::OracleResult& ref = testing::oracle_result(generation_handle());
  ASSERT_TRUE(ref.ok) << ref.error;
  EXPECT_EQ(r.text, ref.output);
  ASSERT_EQ(r.generation_spans.size(), ref.spans.size());
  ASSERT_EQ(r.generation_spans.size(), 2u);
  for (size_t i = 0; i < ref.spans.size(); ++i) {
    // Ours are byte offsets, HF's are character offsets into the same text.
    EXPECT_EQ(testing::char_offset(r.text, r.generation_spans[i].first), ref.spans[i].first);
    EXPECT_EQ(testing::char_offset(r.text, r.generation_spans[i].second), ref.spans[i].second);
  }
  EXPECT_EQ(r.text.substr(r.generation_spans[0].first, r.generation_spans[0].second - r.generation_spans[0].first),
            "Hallo ✓<|im_end|>");
  EXPECT_FALSE(ChatTemplate("{{ x }}").has_generation_blocks());
}

}  // namespace
}  // namespace llmtune::tokenizer
