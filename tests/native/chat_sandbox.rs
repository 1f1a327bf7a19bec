//! Chat templates are code from the model file: hostile ones end in one clear error within a
//! second, and the bytecode rewrite that bounds them leaves ordinary templates' output exactly
//! as plain minijinja renders it.

use std::time::Instant;

use ferrolm::chat::{ChatMessage, ChatTemplate};

const MAX: usize = 2048 * 64;

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage { role: role.into(), content: content.into() }
}

fn chat() -> Vec<ChatMessage> {
    vec![msg("system", "You are terse."), msg("user", "  What is 2+2?  "), msg("assistant", "4"), msg("user", "And <b>3+3</b> & 'quotes' \"too\"?")]
}

/// Plain minijinja with the same settings and helpers, unsandboxed: the oracle for the rewrite.
fn plain_render(source: &str, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut env = minijinja::Environment::new();
    env.set_syntax(minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().unwrap());
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |m: String| -> Result<String, minijinja::Error> { Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m)) });
    env.add_template("t", source).unwrap();
    let messages: Vec<minijinja::Value> = messages.iter().map(|m| minijinja::context! { role => &m.role, content => &m.content }).collect();
    env.get_template("t").unwrap().render(minijinja::context! { messages => messages, add_generation_prompt => add_generation_prompt, bos_token => "<s>", eos_token => "</s>" }).unwrap()
}

/// Templates in the styles real models ship: ChatML, Llama 3 headers, Gemma turns, Mistral's
/// alternation check, a namespace that carries the system prompt, macros, filters, slicing,
/// JSON and arithmetic on loop indices.
const ORDINARY: &[&str] = &[
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' ~ m.role ~ '<|end_header_id|>\n\n' ~ m.content | trim ~ '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}{% for m in rest %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}<start_of_turn>{{ role }}\n{{ (first if loop.first else '') ~ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    "{% set ns = namespace(system='', turns=[]) %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.system = ns.system ~ m.content %}{% else %}{% set ns.turns = ns.turns + [m] %}{% endif %}{% endfor %}{% for m in ns.turns %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}{% if m.role == 'user' %}[INST] {% if loop.last and ns.system %}{{ ns.system }}\n\n{% endif %}{{ m.content }} [/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}",
    "{% macro turn(role, text) %}<|{{ role }}|>\n{{ text }}<|end|>\n{% endmacro %}{% for m in messages %}{{ turn(m.role, m.content.strip()) }}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
    "{{ messages | map(attribute='role') | join(',') }}|{{ messages | length }}|{{ messages[-1].content | tojson }}|{{ (messages | selectattr('role', 'equalto', 'user') | list | length) * 2 + 1 }}|{{ messages[1].content.replace('2', 'two').upper() }}|{{ '%s-%s' | format(messages[0].role, loop is defined) }}|{{ 'x' * 3 }}|{{ [1, 2] + [3] }}|{{ 'a' in 'cat' }}|{{ {'k': messages[2].content} | tojson }}|{{ messages[0].content | indent(2, true) | pprint }}|{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ ',' if not loop.last }}{% endfor %}",
];

#[test]
fn ordinary_templates_render_as_plain_minijinja_does() {
    for (i, source) in ORDINARY.iter().enumerate() {
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        for agp in [true, false] {
            let ours = t.render(&chat(), None, agp, MAX).unwrap_or_else(|e| panic!("template {i}: {e}"));
            assert_eq!(ours, plain_render(source, &chat(), agp), "template {i}");
            assert!(!ours.is_empty());
        }
    }
}

/// Each case: a template, and the limit its error must name.
const HOSTILE: &[(&str, &str, &str)] = &[
    ("nested loops", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "limit"),
    ("nested loops over a literal", "{% for i in 'abcdefghij' * 10000 %}{% for j in 'abcdefghij' * 10000 %}{% endfor %}{% endfor %}", "instruction limit"),
    ("string doubling", "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}", "size limit"),
    ("string doubling with +", "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "size limit"),
    ("list doubling", "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | join }}", "size limit"),
    ("macro doubling", "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}{{ d('x', 40) }}", "limit"),
    ("unbounded recursion", "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", "recursion limit"),
    ("huge repeat", "{{ 'x' * 1000000000 }}", "size limit"),
    ("huge list repeat", "{{ ([1] * 100000000) | length }}", "size limit"),
    ("replace doubling", "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s | replace('a', 'aa') | replace('b', 'bb') %}{% endfor %}", "size limit"),
    ("replace of the empty string", "{% set s = 'x' * 2000 %}{{ s.replace('', s) }}", "size limit"),
    ("join with a huge separator", "{% set s = 'x' * 60000 %}{{ s.join(range(1000) | map('string')) }}", "size limit"),
    ("indent", "{% set s = 'a\n' * 10000 %}{{ s | indent(100000) }}", "size limit"),
    ("format doubling", "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = '%s%s' | format(ns.s, ns.s) %}{% endfor %}", "size limit"),
    ("tojson escaping", "{% set ns = namespace(s='\"') %}{% for i in range(40) %}{% set ns.s = ns.s | tojson %}{% endfor %}", "size limit"),
    ("deep nesting", "{% set ns = namespace(x=[]) %}{% for i in 'x' * 1000 %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}", "nesting limit"),
    ("namespace cycle", "{% set ns = namespace() %}{% set ns.me = [ns] %}{{ ns | tojson }}", "no-cycles"),
    ("literal text in loops", "{% for i in range(1000) %}{% for j in range(1000) %}0123456789012345678901234567890123456789{% endfor %}{% endfor %}", "size limit"),
    ("capture doubling", "{% macro d(n) %}{% if n > 0 %}{% set inner %}{{ d(n - 1) }}{% endset %}{{ inner }}{{ inner }}{% else %}x{% endif %}{% endmacro %}{{ d(30) }}", "limit"),
    ("big comparisons", "{% set l = range(4000) | list %}{% set m = range(4000) | list %}{% for i in 'x' * 100000 %}{% if l == m %}{% endif %}{% endfor %}", "limit"),
];

#[test]
fn hostile_templates_end_in_one_clear_error_within_a_second() {
    for (name, source, limit) in HOSTILE {
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let start = Instant::now();
        let err = t.render(&[msg("user", "hi")], None, true, MAX).expect_err(name).to_string();
        let ms = start.elapsed().as_millis();
        println!("{name}: {ms} ms: {err}");
        assert!(ms < 1000, "{name} took {ms} ms");
        assert!(err.contains("chat template exceeded") && err.contains(limit), "{name}: {err}");
        assert!(err.contains("template in the GGUF is at fault") && !err.contains('\n'), "{name}: {err}");
    }
}

#[test]
fn messages_longer_than_the_context_are_refused_before_rendering() {
    let t = ChatTemplate::new(ORDINARY[0], "<s>", "</s>").unwrap();
    let long = "word ".repeat(MAX / 4);
    let err = t.render(&[msg("user", &long)], None, true, MAX).unwrap_err().to_string();
    assert!(err.contains("more than the context can hold"), "{err}");
}
