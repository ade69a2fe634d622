/**
 * tree-sitter grammar of kdc's .kd pipeline language: the same language as
 * grammar/src/kd.pest (docs/language.md), for Neovim, Helix and Zed. Keywords are
 * contextual, as in kd.pest: a keyword is a keyword only where one may stand.
 */

const commaList = (rule) => seq(rule, repeat(seq(',', rule)), optional(','));

const PREC = { add: 1, mul: 2, neg: 3, pow: 4 };

module.exports = grammar({
  name: 'kd',

  extras: ($) => [/\s/, $.comment],

  word: ($) => $.identifier,

  rules: {
    source_file: ($) => repeat($._declaration),

    _declaration: ($) =>
      choice(
        $.pipeline_declaration,
        $.data_declaration,
        $.augment_declaration,
        $.model_declaration,
        $.role_declaration,
        $.loss_declaration,
        $.stage_declaration,
        $.baseline_declaration,
        $.evaluate_declaration,
        $.export_declaration,
        $.sweep_declaration,
      ),

    // ------------------------------------------------------------------ tokens

    comment: (_) => token(choice(seq('//', /[^\n]*/), seq('/*', /[^*]*\*+([^/*][^*]*\*+)*/, '/'))),
    identifier: (_) => /[A-Za-z_][A-Za-z0-9_]*/,
    number: (_) => /-?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/,
    unit: (_) => token.immediate(choice('deg', '%')),
    quantity: ($) => seq($.number, optional($.unit)),
    string: (_) => token(seq('"', repeat(choice(/[^"\\\n]/, /\\./)), '"')),
    boolean: (_) => choice('true', 'false'),

    // ------------------------------------------------------------------ values and settings

    _value: ($) => choice($.quantity, $.string, $.boolean, $.list, $.call, $.identifier),
    list: ($) => seq('[', optional(commaList($._value)), ']'),
    call: ($) =>
      seq(field('function', $.identifier), '(', optional(commaList($.argument)), ')'),
    argument: ($) => seq(optional(seq(field('name', $.identifier), ':')), field('value', $._value)),
    settings: ($) => seq('{', repeat(seq($.setting, optional(','))), '}'),
    setting: ($) =>
      seq(field('key', $.identifier), choice(seq(':', field('value', $._value)), field('block', $.settings))),

    // ------------------------------------------------------------------ declarations

    pipeline_declaration: ($) => seq('pipeline', field('name', $.identifier), optional($.settings)),

    data_declaration: ($) =>
      seq('data', field('name', $.identifier), '=', field('source', $.call), optional($.settings)),

    augment_declaration: ($) =>
      seq(
        'augment',
        field('name', $.identifier),
        '{',
        repeat(seq(choice($.call, $.identifier), optional(','))),
        '}',
      ),

    model_declaration: ($) =>
      seq('model', field('name', $.identifier), '{', $.input, repeat($._layer_item), '}'),
    input: ($) => seq('input', optional('tokens'), $.list),
    _layer_item: ($) => choice($.residual, $.layer),
    residual: ($) => seq('residual', '{', repeat($._layer_item), '}', optional($.alias)),
    layer: ($) => seq(choice($.call, field('name', $.identifier)), optional($.alias)),
    alias: ($) => seq('as', field('name', $.identifier)),

    role_declaration: ($) =>
      seq(
        field('role', choice('teacher', 'student')),
        field('name', $.identifier),
        '=',
        choice(
          $.onnx_source,
          $.bert_source,
          $.prune_source,
          $.quantize_source,
          seq(
            field('architecture', $.identifier),
            optional(seq('from', field('weights', $.string))),
            optional($.settings),
          ),
        ),
      ),
    onnx_source: ($) =>
      seq('onnx', '(', $.string, ')', '{', repeat(seq($.onnx_port, optional(','))), '}'),
    onnx_port: ($) =>
      seq(choice('input', 'output', 'tap'), $.string, optional($.list), optional($.alias)),
    bert_source: ($) => seq('bert', '(', $.string, ')', optional($.settings)),
    prune_source: ($) => seq('prune', '(', field('model', $.identifier), ')', optional($.settings)),
    quantize_source: ($) =>
      seq('quantize', '(', field('model', $.identifier), ')', 'on', $.data_ref, optional($.settings)),

    loss_declaration: ($) =>
      seq('loss', field('name', $.identifier), optional($.loss_parameters), '=', field('body', $._expression)),
    loss_parameters: ($) => seq('(', optional(commaList($.loss_parameter)), ')'),
    loss_parameter: ($) => seq(field('name', $.identifier), '=', field('default', $._expression)),

    stage_declaration: ($) =>
      seq('stage', field('name', $.identifier), '{', repeat(seq($._stage_statement, optional(','))), '}'),
    _stage_statement: ($) =>
      choice(
        $.train_statement,
        $.distill_statement,
        $.loss_statement,
        $.optimizer_statement,
        $.schedule_statement,
        $.validate_statement,
        $.keep_statement,
        $.stage_setting,
      ),
    train_statement: ($) =>
      seq('train', field('model', $.identifier), 'on', $.data_ref, optional(seq('with', field('augment', $.identifier)))),
    distill_statement: ($) =>
      seq(
        'distill',
        field('teacher', $.identifier),
        repeat(seq(',', field('teacher', $.identifier))),
        '->',
        field('student', $.identifier),
        'on',
        $.data_ref,
        optional(seq('with', field('augment', $.identifier))),
      ),
    loss_statement: ($) => seq('loss', $._expression),
    optimizer_statement: ($) => seq('optimizer', choice($.call, field('name', $.identifier))),
    schedule_statement: ($) => seq('schedule', choice($.call, field('name', $.identifier))),
    validate_statement: ($) => seq('validate', 'on', $.data_ref),
    keep_statement: ($) => seq('keep', choice(seq('best', field('metric', $.identifier)), 'last')),
    stage_setting: ($) => seq(field('key', choice('epochs', 'batch', 'clip', 'early_stop')), field('value', $._value)),
    data_ref: ($) => seq(field('data', $.identifier), '.', field('split', $.identifier)),

    baseline_declaration: ($) =>
      seq(
        'baseline',
        field('name', $.identifier),
        '=',
        field('student', $.identifier),
        'trained',
        'like',
        field('stage', $.identifier),
        repeat(seq('+', field('stage', $.identifier))),
        optional(seq('without', field('teacher', $.identifier), repeat(seq(',', field('teacher', $.identifier))))),
      ),
    evaluate_declaration: ($) =>
      seq('evaluate', commaList($.identifier), 'on', $.data_ref, optional($.metric_list)),
    metric_list: ($) => seq('{', repeat(seq(field('metric', $.identifier), optional(','))), '}'),
    export_declaration: ($) =>
      seq('export', field('model', $.identifier), optional(seq('to', $.string, repeat(seq(',', $.string))))),

    sweep_declaration: ($) =>
      seq('sweep', field('name', $.identifier), '{', repeat(seq($._sweep_statement, optional(','))), '}'),
    _sweep_statement: ($) => choice($.search_statement, $.select_statement, $.sweep_axis),
    search_statement: ($) => seq('search', choice($.call, $.identifier)),
    select_statement: ($) =>
      seq('select', field('metric', $.identifier), 'of', field('model', $.identifier), 'on', $.data_ref),
    // `stage.distill.epochs in [30, 60]` or `stage.distill.lr in log_uniform(1e-4, 1e-2)`: a list
    // of values or a distribution; a list-valued setting is one element of the list.
    sweep_axis: ($) => seq(field('key', $.sweep_key), 'in', field('values', choice($.list, $.call))),
    sweep_key: (_) => /[A-Za-z0-9_]+\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)+/,

    // ------------------------------------------------------------------ loss expressions

    _expression: ($) =>
      choice($.binary_expression, $.unary_expression, $.number, $.call_expression, $.member, $.identifier, $.parenthesized),
    parenthesized: ($) => seq('(', $._expression, ')'),
    unary_expression: ($) => prec(PREC.neg, seq('-', $._expression)),
    binary_expression: ($) =>
      choice(
        prec.left(PREC.add, seq($._expression, choice('+', '-'), $._expression)),
        prec.left(PREC.mul, seq($._expression, choice('*', '/'), $._expression)),
        prec.right(PREC.pow, seq($._expression, '^', $._expression)),
      ),
    call_expression: ($) =>
      seq(field('function', $.identifier), '(', optional(commaList($.expression_argument)), ')'),
    expression_argument: ($) =>
      // `T = 2` binds a loss's parameter; `from: 8` is a schedule's argument.
      seq(optional(seq(field('name', $.identifier), choice('=', ':'))), field('value', $._expression)),
    member: ($) => seq(field('model', $.identifier), '.', field('port', $.identifier)),
  },
});
