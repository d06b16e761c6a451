"""TT-LoRA MoE Studio: navigation only (each page lives in pages/)."""

import streamlit as st

st.set_page_config(page_title="TT-LoRA MoE Studio", page_icon=":material/hub:", layout="wide")
st.set_option("client.showErrorDetails", "type")  # a bug shows its type, never a traceback
st.set_option("client.toolbarMode", "viewer")

navigation = st.navigation({
    "Learn": [
        st.Page("pages/overview.py", title="Overview", icon=":material/hub:", default=True),
        st.Page("pages/budget.py", title="Budget calculator", icon=":material/calculate:"),
        st.Page("pages/compare.py", title="Compare with the paper", icon=":material/compare:"),
    ],
    "Build": [
        st.Page("pages/train.py", title="Train an expert", icon=":material/model_training:"),
        st.Page("pages/experts.py", title="Experts", icon=":material/inventory_2:"),
        st.Page("pages/router.py", title="Router", icon=":material/alt_route:"),
    ],
    "Use": [
        st.Page("pages/playground.py", title="Playground", icon=":material/chat:"),
    ],
})
with st.spinner("Starting the studio (loading the engine)…"):   # the server's first run only
    from pages import common
common.warm_up()     # the base model and the demo pack load in the background, once per server
navigation.run()
