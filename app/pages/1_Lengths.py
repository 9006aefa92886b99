"""Token-length distributions of the tokenized training data, by source, language and task type."""

import common
import streamlit as st

from longalign.views import lengths, readers

common.page("Lengths", "How long the training sequences are, in tokens of the target tokenizer.")
run = common.pick_run()
table = common.token_table(run)

for col, (label, value, help_text) in zip(st.columns(5), lengths.headline(table, readers.load_token_meta(run))):
    col.metric(label, value, help=help_text)

left, mid, right = st.columns([3, 1, 1])
by = left.radio("Group by", list(lengths.LENGTH_GROUPS), horizontal=True, format_func=lengths.GROUP_LABELS.get)
log_x = mid.toggle("log x axis")
split = right.number_input("split at (tokens)", min_value=256, max_value=262144, value=8192, step=1024)
common.chart(common.guard(lengths.fig_length_distribution, table, by, log_x=log_x, split=int(split)), key="lengths")
panels = lengths.length_panels(table, int(split), log_x=log_x)
st.caption(
    f"Shown: {lengths.panels_text(panels)}."
    + (
        " Split like the paper's length figure, so the short chats are not squeezed into one bin."
        if len(panels) == 2
        else f" No sequence reaches the split at {int(split):,} tokens, so there is one panel."
    )
)

st.subheader("Long vs short data")
st.caption(
    "Short = chat data (task type `chat` or a short-data source such as ShareGPT); long = the generated "
    "long-document instructions."
)
common.chart(lengths.fig_mix(table), key="mix")
st.dataframe(
    lengths.mix_summary(table),
    hide_index=True,
    column_config={
        k: st.column_config.NumberColumn(format="percent") for k in ("sequence share", "token share", "target share")
    },
)

st.subheader(f"Per {lengths.GROUP_LABELS.get(by, by)}")
st.dataframe(
    lengths.length_summary(table, by),
    hide_index=True,
    column_config={"token share": st.column_config.NumberColumn(format="percent")},
)

quality = readers.load_quality(run)
if quality:
    st.subheader("Generated long data: what the checks rejected")
    st.caption(
        "From data/quality.json. Format checks reject template echoes, repeats and non-questions; the relevance "
        "gate rejects questions off the document's topic (off_topic), answers grounded in neither the document "
        "nor the question (ungrounded) and questions repeating another record's (duplicate_across_records)."
    )
    for col, (label, value, help_text) in zip(st.columns(4), lengths.quality_headline(quality)):
        col.metric(label, value, help=help_text)
    st.dataframe(
        lengths.quality_table(quality),
        hide_index=True,
        column_config={"share": st.column_config.NumberColumn(format="percent")},
    )
